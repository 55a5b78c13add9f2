local metrics = require("app.services.metrics")

local ngx = ngx

local M = {}

function M.handle()
    ngx.header["Content-Type"] = "text/plain; version=0.0.4"
    ngx.print(metrics.render())
end

return M
