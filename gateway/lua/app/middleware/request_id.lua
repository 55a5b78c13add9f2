-- Rewrite phase. The id is written back into the request headers so that
-- proxy_pass and ngx.location.capture forward it to the backend unchanged.
local ngx = ngx

local M = {}

local MAX_LEN = 128

local function valid(id)
    -- Reject anything that could smuggle bytes into logs or response headers.
    return #id <= MAX_LEN and not id:find("[^%w%-_%.:]")
end

function M.rewrite()
    local id = ngx.var.http_x_request_id
    if id == nil or id == "" or not valid(id) then
        id = ngx.var.request_id -- nginx's own 32-hex random id
        ngx.req.set_header("X-Request-Id", id)
    end
    ngx.ctx.request_id = id
end

function M.header_filter()
    ngx.header["X-Request-Id"] = ngx.ctx.request_id
end

return M
