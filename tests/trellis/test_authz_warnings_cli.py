"""kubectl's `Warning:` lines: `trellis validate` and `trellis lab apply` accept an
AuthorizationPolicy value no request matches (Istio accepts it too) and say so on stderr,
naming the file, the object and the field path; the exit code and stdout do not change."""
from test_lab_apply_cli import fake_lab, trellis

DOC = """apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [post], paths: [admin]}}]}]
"""


def test_validate_and_apply_warn_of_values_that_never_match(tmp_path):
    f = tmp_path / "deny.yaml"
    f.write_text(DOC)
    code, out, err = trellis("validate", str(f))
    assert (code, out.strip()) == (0, "valid: 1 resource(s)"), err
    warnings = [line for line in err.splitlines() if line.startswith("Warning: ")]
    assert warnings == [
        f"Warning: {f}: AuthorizationPolicy default/deny-admin: spec.rules[0].to[0].operation.methods[0]: 'post' has "
        "lowercase letters, so it never matches: HTTP methods are case-sensitive (RFC 9110 9.1) and Istio compares "
        "them as written; write 'POST'",
        f"Warning: {f}: AuthorizationPolicy default/deny-admin: spec.rules[0].to[0].operation.paths[0]: 'admin' never "
        "matches: a request path starts with '/'; write '/admin'"], err
    code, out, err = trellis("lab", "apply", "-f", str(f), state=fake_lab(tmp_path))
    assert (code, out.strip()) == (0, "authorizationpolicy/deny-admin created"), err
    assert sum(line.startswith("Warning: ") for line in err.splitlines()) == 2, err
