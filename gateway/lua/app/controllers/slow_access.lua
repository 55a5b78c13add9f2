-- Planted problem: a slow access check. The request waits in the access phase
-- (an ngx.sleep that yields, as a check against a remote service would), so
-- the worker stays free. A latency tool should put the time in the access
-- phase, as waiting, with no CPU and nothing blocked.
local args = require("app.utils.args")
local config = require("app.config")
local response = require("app.utils.response")

local ngx = ngx

local M = {}

function M.slow_access_check(ms)
    ngx.sleep(ms / 1000)
    return true
end

function M.access()
    local ms = args.int("ms", config.planted.slow_access_ms, 0, 60000)
    M.slow_access_check(ms)
    require("app").access()
end

function M.handle()
    response.json(200, { route = "/slow/access" })
end

return M
