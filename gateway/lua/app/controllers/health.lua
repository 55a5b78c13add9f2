local response = require("app.utils.response")

local ngx = ngx

local M = {}

function M.handle()
    response.json(200, {
        status = "ok",
        worker = ngx.worker.id(),
        pid = ngx.worker.pid(),
        time = ngx.now(),
    })
end

return M
