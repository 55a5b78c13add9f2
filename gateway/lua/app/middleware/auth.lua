-- Bearer tokens: "<user>.<expiry>.<hex HMAC-SHA1 of user.expiry>", signed with the
-- gateway's secret. Only /api/secure/ needs one.
local config = require("app.config")

local M = {}

local function sign(payload)
    return (ngx.hmac_sha1(config.auth_secret, payload):gsub(".", function(c)
        return string.format("%02x", string.byte(c))
    end))
end

function M.issue(user)
    local payload = user .. "." .. (ngx.time() + config.token_ttl)
    return payload .. "." .. sign(payload)
end

-- The user of a valid token, or nil and why not.
function M.verify(token)
    local user, expiry, sig = string.match(token or "", "^([%w_]+)%.(%d+)%.(%x+)$")
    if not user then
        return nil, "malformed token"
    end
    if tonumber(expiry) < ngx.time() then
        return nil, "token expired"
    end
    if sign(user .. "." .. expiry) ~= sig then
        return nil, "bad signature"
    end
    return user
end

function M.check()
    if string.sub(ngx.var.uri, 1, 12) ~= "/api/secure/" then
        return
    end
    local header = ngx.req.get_headers()["authorization"] or ""
    local user, err = M.verify(string.match(header, "^Bearer%s+(.+)$"))
    if not user then
        ngx.header["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        ngx.status = 401
        ngx.say(require("cjson.safe").encode({ error = err }))
        return ngx.exit(401)
    end
    ngx.ctx.user = user
end

return M
