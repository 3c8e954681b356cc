"""The benchmark's server app: nginx with one worker, `200 ok` on /, started as a pod command."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

CONF = """worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  server {{
    listen {port} reuseport backlog=4096;
    location / {{ return 200 "ok"; }}
  }}
}}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="trellis-bench-nginx-")
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(dir=d, port=args.port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    os.execv(nginx, [nginx, "-c", conf, "-e", "stderr"])


if __name__ == "__main__":
    main()
