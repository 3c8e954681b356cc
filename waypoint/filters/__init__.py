"""The waypoint's per-request policies, pure and sans-IO (mitmproxy-addon-like classes with an
injectable clock and random source): path normalisation, retries and the retry budget, rate
limits, outlier detection, connection-pool limits and load balancing."""
