"""Sans-IO HTTP for the waypoint: shared events, HTTP/1.1 (our own strict parser, h1wire; h11 is the test oracle), HTTP/2 (h2), protocol detection."""
