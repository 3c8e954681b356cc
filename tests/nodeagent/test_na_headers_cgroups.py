"""Header discovery (with nothing under /lib/modules) and cgroup discovery from /proc."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from nodeagent import cgroups, headers


def test_running_kernel_has_no_lib_modules_here_and_headers_are_still_found(tmp_path):
    assert not Path("/lib/modules", platform.release()).exists()
    found = headers.find_headers()
    assert (found.source / "include/linux/kconfig.h").is_file()
    assert (found.build / "include/generated").is_dir()
    merged = headers.prepare(found, tmp_path)
    for rel in ("include/linux/kconfig.h", "include/generated/autoconf.h",
                "arch/x86/include/asm/processor.h", "arch/x86/include/generated/uapi/asm/unistd_64.h"):
        assert (merged / rel).is_file(), rel
    assert headers.prepare(found, tmp_path) == merged  # reused, not rebuilt


def test_lib_modules_wins_when_present(tmp_path):
    found = headers.find_headers()
    mod = tmp_path / "lib/modules/9.9.9-test"
    mod.mkdir(parents=True)
    (mod / "build").symlink_to(found.build)
    (mod / "source").symlink_to(found.source)
    got = headers.find_headers(root=tmp_path, release="9.9.9-test")
    assert (got.build, got.source) == (found.build.resolve(), found.source.resolve())


def test_not_found_names_packages_and_where_it_looked(tmp_path):
    with pytest.raises(headers.HeadersNotFound) as e:
        headers.find_headers(root=tmp_path, release="6.18.0-test")
    msg = str(e.value)
    assert "apt-get install linux-headers-6.18.0-test" in msg
    assert "linux-headers-amd64" in msg
    assert str(tmp_path / "lib/modules/6.18.0-test") in msg
    assert str(tmp_path / "usr/src/linux-headers-*") in msg


MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


@pytest.mark.parametrize("text,want", [
    (MOUNTS, Path("/sys/fs/cgroup/unified")),
    ("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", Path("/sys/fs/cgroup")),
    ("cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n", Path("/mnt/my cg")),
])
def test_parse_cgroup2_mount(text, want):
    assert cgroups.parse_cgroup2_mount(text) == want


def test_no_cgroup2_mount_is_advice():
    with pytest.raises(cgroups.CgroupError, match="mount -t cgroup2"):
        cgroups.parse_cgroup2_mount("proc /proc proc rw 0 0\n")


@pytest.mark.parametrize("text,want", [
    ("0::/trellis-lab/n1/pods/default_a\n", "/trellis-lab/n1/pods/default_a"),
    ("12:pids:/x\n1:name=systemd:/y\n0::/z\n", "/z"),
    ("0::/\n", "/"),
    ("4:cpu:/x\n", None),
])
def test_parse_proc_cgroup(text, want):
    assert cgroups.parse_proc_cgroup(text) == want


@pytest.mark.parametrize("paths,want", [
    ([], None),
    (["/a/b/c"], "/a/b/c"),
    (["/a/b/c", "/a/b/c"], "/a/b/c"),
    (["/a/b/c", "/a/b/d"], "/a/b"),
    (["/a/b", "/a/b/c"], "/a/b"),
    (["/a", "/b"], "/"),
])
def test_common_cgroup(paths, want):
    assert cgroups.common_cgroup(paths) == want


def test_pod_cgroup_from_processes_in_its_netns(pod):
    assert cgroups.pod_cgroup(Path("/run/netns", pod.netns)) is None  # nobody home yet
    a = pod.spawn("import sys; print('up', flush=True); sys.stdin.read()")
    b = pod.spawn("import sys; print('up', flush=True); sys.stdin.read()")
    assert a.stdout.readline() and b.stdout.readline()
    assert cgroups.pod_cgroup(Path("/run/netns", pod.netns)) == pod.cgroup
    assert cgroups.pids_in_netns(Path("/run/netns", pod.netns)) == sorted([a.pid, b.pid])
    c = pod.spawn("import sys; print('up', flush=True); sys.stdin.read()", cgroup=pod.other_cgroup)
    assert c.stdout.readline()
    assert cgroups.pod_cgroup(Path("/run/netns", pod.netns)) == pod.root_cgroup
    # the node agent's (and lab ztunnel's) own cgroup does not count
    ignore = ("/" + str(pod.other_cgroup.relative_to(cgroups.cgroup2_mount())),)
    assert cgroups.pod_cgroup(Path("/run/netns", pod.netns), ignore=ignore) == pod.cgroup


def test_missing_netns_is_named():
    with pytest.raises(cgroups.CgroupError, match="tt-na-nonexistent"):
        cgroups.pod_cgroup(Path("/run/netns/tt-na-nonexistent"))


def test_unwritable_state_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    env_before = os.environ.pop("BCC_KERNEL_SOURCE", None)
    try:
        with pytest.raises(headers.HeadersNotFound, match=str(blocker)):
            headers.use_headers(state_dir=blocker / "sub")
    finally:
        if env_before is not None:
            os.environ["BCC_KERNEL_SOURCE"] = env_before
