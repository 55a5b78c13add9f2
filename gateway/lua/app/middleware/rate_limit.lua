-- Leaky bucket per client address and route class, in a shared dict so that all
-- workers drain the same bucket.
local config = require("app.config")

local M = {}
local dict = ngx.shared.gw_limit

-- Returns the delay (s) the request would wait, or nil when over the burst.
local function leak(key, rate, burst)
    local now = ngx.now()
    local level = dict:get(key .. ":l") or 0
    local last = dict:get(key .. ":t") or now
    level = math.max(0, level - (now - last) * rate) + 1
    if level > burst + 1 then
        return nil
    end
    dict:set(key .. ":l", level, 60)
    dict:set(key .. ":t", now, 60)
    return (level - 1) / rate
end

function M.check()
    local limits, class = config.rate_limit, "all"
    if ngx.var.uri == "/api/limited" then
        limits, class = config.limited_route, "limited"
    end
    local key = class .. ":" .. (ngx.var.binary_remote_addr or "")
    if not leak(key, limits.rate, limits.burst) then
        ngx.header["Retry-After"] = "1"
        return ngx.exit(429)
    end
end

return M
