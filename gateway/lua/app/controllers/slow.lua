-- Planted problem (the control case): a slow upstream. The request waits, but
-- the subrequest yields to the event loop, so the worker stays free. Profilers
-- should show latency without on-CPU or blocked time under slow_upstream_call.
local args = require("app.utils.args")
local config = require("app.config")

local ngx = ngx

local M = {}

function M.slow_upstream_call(ms)
    local res = ngx.location.capture("/_backend/slow", { args = { delay_ms = ms } })
    return res
end

function M.handle()
    local ms = args.int("ms", config.planted.slow_upstream_ms, 0, 60000)
    local res = M.slow_upstream_call(ms)
    ngx.status = res.status
    ngx.header["Content-Type"] = "application/json"
    ngx.print(res.body)
end

return M
