local cjson = require("cjson.safe")

local M = {}

function M.get()
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode({ status = "ok", worker = ngx.worker.pid() }))
end

return M
