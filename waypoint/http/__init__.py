"""Sans-IO HTTP for the waypoint: shared events, HTTP/1.1 (h11), HTTP/2 (h2), protocol detection."""
