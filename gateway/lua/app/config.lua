-- Gateway settings. The default rate limit is high on purpose: load tests measure
-- the planted problems, not the limiter; /api/limited shows the limiter working.
return {
    rate_limit = { rate = 100000, burst = 50000 },
    limited_route = { rate = 2, burst = 2 },
    auth_secret = "ljprobe-demo-secret",
    token_ttl = 3600,
    cache = { lru_items = 1000, ttl = 30, lock_timeout = 2 },
    cors_origin = "*",
}
