-- X-Request-Id: kept when the client sends one, generated otherwise, echoed back.
local M = {}

local counter = 0

function M.assign()
    local id = ngx.req.get_headers()["x-request-id"]
    if not id or id == "" then
        counter = counter + 1
        id = string.format("%x-%x-%x", ngx.worker.pid(), ngx.now() * 1000, counter)
        ngx.req.set_header("X-Request-Id", id)
    end
    ngx.ctx.request_id = id
    ngx.header["X-Request-Id"] = id
end

return M
