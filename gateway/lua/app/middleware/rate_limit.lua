-- Leaky bucket per (zone, client address), the algorithm of nginx limit_req:
-- the bucket drains at `rate` requests/s and may hold `burst` extra requests.
-- State lives in a shared dict so all workers see the same bucket.
local config = require("app.config")
local response = require("app.utils.response")

local ngx = ngx
local max = math.max
local dict = ngx.shared.ratelimit

local M = {}

-- Idle buckets are dropped after this many seconds.
local STATE_TTL = 60

-- Returns true if the request fits, false if the bucket overflowed.
function M.leak(zone, client)
    local limit = config.rate_limit[zone] or config.rate_limit.default
    local key = zone .. ":" .. client
    local now = ngx.now()
    local excess, last = dict:get(key .. ":e"), dict:get(key .. ":t")
    if excess == nil or last == nil then
        excess = 0
    else
        excess = max(excess - limit.rate * (now - last) + 1, 0)
    end
    if excess > limit.burst then
        return false, limit
    end
    dict:set(key .. ":e", excess, STATE_TTL)
    dict:set(key .. ":t", now, STATE_TTL)
    return true, limit
end

function M.access()
    local zone = ngx.var.rate_zone
    if zone == "" then
        zone = "default"
    end
    local ok, limit = M.leak(zone, ngx.var.binary_remote_addr)
    if not ok then
        ngx.header["Retry-After"] = 1
        ngx.header["X-RateLimit-Limit"] = limit.rate
        return response.abort(429, { error = "rate limit exceeded", zone = zone })
    end
end

return M
