"""RateLimitPolicy at a real waypoint: a 10 req/s limit admits 10 +/- 2 per second under a
paced 50 req/s load from a client pod; the excess gets 429 with `retry-after` and the IETF
draft's `RateLimit-Policy`/`RateLimit` fields; a caller with a per-principal override (the
batch pod, its own ServiceAccount), running at the same time, gets its own rate."""
import re

from e2e.labctl import metric_value, wait_until
from e2e.l7guard.guardlab import WEB

BATCH = "spiffe://cluster.local/ns/default/sa/batch"
POLICY = f"""apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: web-rl, namespace: default}}
spec:
  targetRefs: [{{kind: Service, name: web}}]
  requestsPerUnit: 10
  unit: Second
  burst: 10
  overrides: [{{principal: "{BATCH}", requestsPerUnit: 25}}]
"""
OFFERED, SECONDS = 50, 5


def admitted_per_second(results: list) -> float:
    """Admitted requests per second once the burst (the full bucket at the start) is spent:
    sends from 1 s on, when the bucket has long been empty under 5x the limit."""
    after = [status for t, status in results if 1.0 <= t < SECONDS]
    return sum(1 for s in after if s == 200) / (SECONDS - 1.0)


def test_a_local_rate_limit_holds_under_5x_load_with_its_own_rate_for_an_override(lab):
    with lab.applied(POLICY):
        wait_until(lambda: lab.service_routes("web")["rateLimits"] == ["default/web-rl"],
                   "the waypoint to apply RateLimitPolicy default/web-rl", timeout=30)
        before = metric_value(lab.waypoint_metrics(), "trellis_waypoint_rate_limited_total")
        args = ("paced", f"http://{WEB}/", "--rate", str(OFFERED), "--duration", str(SECONDS))
        client, batch = lab.start("client", *args), lab.start("batch", *args)
        client, batch = lab.result(client), lab.result(batch)
        rejected = metric_value(lab.waypoint_metrics(), "trellis_waypoint_rate_limited_total") - before
    for who, res, rate in (("client", client, 10), ("batch", batch, 25)):
        assert res["errors"] == [], (who, res["errors"][:5])
        sent = res["results"]
        # the load was offered: every scheduled request went out, none later than 1 s behind
        assert len(sent) == OFFERED * SECONDS and sent[-1][0] < SECONDS + 1.0, (who, len(sent), sent[-1])
        assert {s for _, s in sent} == {200, 429}, who
        got = admitted_per_second(sent)
        print(f"{who}: {got:.2f} admitted/s after the burst (limit {rate})")
        assert rate * 0.8 <= got <= rate * 1.2, (who, got)
    # 10 req/s admits 10 +/- 2 per second (the figure)
    assert 8 <= admitted_per_second(client["results"]) <= 12
    # each 429 was counted once at the waypoint
    assert rejected == sum(1 for res in (client, batch) for _, s in res["results"] if s == 429)

    refused, ok = client["heads"]["429"], client["heads"]["200"]
    assert int(refused["retry-after"]) >= 1
    assert refused["ratelimit-policy"] == '"default/web-rl";q=10;w=1'
    assert re.fullmatch(r'"default/web-rl";r=0;t=\d+', refused["ratelimit"]), refused["ratelimit"]
    # admitted answers carry the quota as well (the draft: so a client can pace itself)
    assert ok["ratelimit-policy"] == '"default/web-rl";q=10;w=1' and ok["ratelimit"].startswith('"default/web-rl";r=')
    assert batch["heads"]["429"]["ratelimit-policy"] == '"default/web-rl";q=25;w=1'
