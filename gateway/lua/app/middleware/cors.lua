-- CORS headers on every response; preflight requests are answered here.
local config = require("app.config")

local M = {}

function M.apply()
    ngx.header["Access-Control-Allow-Origin"] = config.cors_origin
    if ngx.req.get_method() == "OPTIONS" then
        ngx.header["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        ngx.header["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Request-Id"
        ngx.header["Access-Control-Max-Age"] = "600"
        return ngx.exit(ngx.HTTP_NO_CONTENT)
    end
end

return M
