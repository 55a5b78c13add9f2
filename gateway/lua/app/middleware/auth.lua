-- Access phase: locations that `set $auth bearer;` need a valid token.
local token = require("app.services.token")
local response = require("app.utils.response")

local ngx = ngx

local M = {}

function M.access()
    if ngx.var.auth ~= "bearer" then
        return
    end
    local header = ngx.var.http_authorization
    local bearer = header and header:match("^[Bb]earer%s+(%S+)$")
    if not bearer then
        ngx.header["WWW-Authenticate"] = 'Bearer realm="gateway"'
        return response.abort(401, { error = "missing bearer token" })
    end
    local claims, err = token.verify(bearer)
    if not claims then
        ngx.header["WWW-Authenticate"] = 'Bearer realm="gateway", error="invalid_token"'
        return response.abort(401, { error = err })
    end
    ngx.ctx.user = claims.sub
end

return M
