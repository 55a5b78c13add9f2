-- Static settings for the gateway. Everything tunable lives here so tests and
-- load scripts can reason about one file.
local M = {}

-- Leaky bucket per client and zone. The default zone is deliberately huge so
-- load tests measure the app, not the limiter; "limited" exists to show 429s.
M.rate_limit = {
    default = { rate = 100000, burst = 100000 },
    limited = { rate = 2, burst = 3 },
}

M.cors = {
    allow_origin = "*",
    allow_methods = "GET, POST, PUT, DELETE, OPTIONS",
    allow_headers = "Authorization, Content-Type, X-Request-Id",
    expose_headers = "X-Request-Id, X-Cache",
    max_age = 600,
}

M.auth = {
    -- Demo secret; a real deployment would load it from a secrets store.
    secret = "ljprobe-gateway-demo-secret",
    token_ttl = 3600,
    users = { alice = "wonderland", bob = "builder" },
}

M.cache = {
    l1_size = 1000,   -- items per worker
    l1_ttl = 5,       -- seconds; short so L2 stays the source of truth
    l2_ttl = 60,
    lock_timeout = 3,
    lock_exptime = 10, -- must outlive the slowest loader
}

-- Simulated backend latency for product loads (cache misses).
M.product_load_delay_ms = 5

-- Work per request of the planted routes at ?n=1 (the default), each sized to
-- ~10 ms of CPU on a 2020s x86 core; ?n= multiplies it.
M.planted = {
    hot_nyi_iterations = 600,
    hot_jit_iterations = 1000000,
    alloc_churn_rows = 2000,
    block_sleep_ms = 20,
    slow_upstream_ms = 50,
    slow_access_ms = 30,
    leak_bytes = 256,
    -- /api/quote: loop iterations per stage (about 40/30/30 of its CPU).
    quote = { parse = 400000, price = 300000, render = 300000 },
}

-- A planted regression switched on by configuration (nginx.conf's
-- `env GATEWAY_SLOWER=...`, from `cargo xtask gateway up --slower NAME`): the
-- function named does slower_factor times its work. Empty means none.
M.slower = os.getenv("GATEWAY_SLOWER") or ""
M.slower_factor = 1.2

return M
