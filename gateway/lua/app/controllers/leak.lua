local args = require("app.utils.args")
local config = require("app.config")
local leak = require("app.services.leak")
local response = require("app.utils.response")

local ngx = ngx

local M = {}

function M.handle()
    local size
    if ngx.var.arg_reset == "1" then
        size = leak.leak_reset()
    else
        local bytes = args.int("bytes", config.planted.leak_bytes, 0, 1048576)
        size = leak.leak_grow(ngx.ctx.request_id or ngx.var.request_id, bytes)
    end
    response.json(200, { route = "/leak", retained = size, worker = ngx.worker.pid() })
end

return M
