"""Path normalisation: the bypass spellings of /admin all become /admin; escaped slashes 400."""
import pytest
from hypothesis import given, strategies as st

from waypoint.filters.normalize import PathRejected, normalize_path, normalize_target, remove_dot_segments


@pytest.mark.parametrize("raw", ["/admin", "//admin", "/./admin", "/x/../admin", "/%61dmin", "/%61%64%6D%69%6E",
                                 "/%2e/admin", "/%2E%2E/admin", "///admin/.", "/a/b/../../admin", "/\\admin", "/x\\..\\admin",
                                 "/../../admin", "/admin/x/.."])
def test_bypass_spellings_normalise_to_admin(raw):
    assert normalize_path(raw).rstrip("/") == "/admin"


@pytest.mark.parametrize("raw,out", [
    ("/a/./b/../c", "/a/c"), ("/a/b/..", "/a/"), ("/a%20b", "/a%20b"), ("/a%7eb", "/a~b"), ("/a%3fb", "/a%3Fb"),
    ("/%zz", "/%zz"), ("/", "/"), ("/a//b///c", "/a/b/c"), ("/..", "/"),
])
def test_rfc3986_details(raw, out):
    assert normalize_path(raw) == out


@pytest.mark.parametrize("raw", ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb", "/%2F/admin"])
def test_escaped_slashes_are_refused_unless_allowed(raw):
    with pytest.raises(PathRejected) as exc:
        normalize_path(raw)
    assert exc.value.status == 400 and "escaped slash" in str(exc.value)
    kept = normalize_path(raw, allow_escaped_slashes=True)
    assert "%2" in kept.upper() or "%5" in kept.upper()   # kept, never decoded into a separator


def test_query_is_kept_and_relative_paths_refused():
    assert normalize_target("//a/./b?x=/../y&z=%2F") == "/a/b?x=/../y&z=%2F"
    with pytest.raises(PathRejected, match="does not start with '/'"):
        normalize_path("admin")


@given(st.text(alphabet="/.%2aAfF5c\\x", max_size=30).map(lambda s: "/" + s))
def test_normalised_paths_are_fixed_points_without_dot_or_empty_segments(raw):
    try:
        out = normalize_path(raw)
    except PathRejected as exc:
        assert exc.status == 400
        return
    assert out.startswith("/") and "//" not in out and "/./" not in out and "/../" not in out
    assert normalize_path(out) == out and remove_dot_segments(out) == out
