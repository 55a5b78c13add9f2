local config = require("app.config")

local ngx = ngx
local conf = config.cors

local M = {}

-- Access phase: a browser preflight never carries credentials, so it is
-- answered before rate limiting and auth.
function M.access()
    if ngx.req.get_method() ~= "OPTIONS" then
        return
    end
    if ngx.var.http_origin == nil or ngx.var.http_access_control_request_method == nil then
        return
    end
    ngx.header["Access-Control-Allow-Methods"] = conf.allow_methods
    ngx.header["Access-Control-Allow-Headers"] = conf.allow_headers
    ngx.header["Access-Control-Max-Age"] = conf.max_age
    return ngx.exit(204)
end

function M.header_filter()
    if ngx.var.http_origin == nil then
        return
    end
    ngx.header["Access-Control-Allow-Origin"] = conf.allow_origin
    ngx.header["Access-Control-Expose-Headers"] = conf.expose_headers
    ngx.header["Vary"] = "Origin"
end

return M
