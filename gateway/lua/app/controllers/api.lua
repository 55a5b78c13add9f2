-- JSON APIs: login issues a token, secure routes need it, products come through
-- the two-level cache from the backend.
local cjson = require("cjson.safe")
local auth = require("app.middleware.auth")
local cache = require("app.services.cache")

local M = {}

local function json(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(body))
end

function M.login()
    local user = ngx.var.arg_user or "demo"
    if not string.match(user, "^[%w_]+$") then
        return json(400, { error = "user must be letters, digits or _" })
    end
    json(200, { token = auth.issue(user) })
end

function M.secure()
    json(200, { user = ngx.ctx.user, path = ngx.var.uri })
end

local function load_product(key)
    local id = string.match(key, "(%d+)$")
    local res = ngx.location.capture("/_backend/products/" .. id)
    if res.status ~= 200 then
        return nil, "backend status " .. res.status
    end
    return cjson.decode(res.body)
end

function M.product()
    local id = string.match(ngx.var.uri, "^/api/products/(%d+)$")
    if not id then
        return json(404, { error = "no such product" })
    end
    local product, source = cache.get("product:" .. id, load_product)
    if not product then
        return json(502, { error = source })
    end
    json(200, { product = product, source = source })
end

function M.limited()
    json(200, { ok = true })
end

return M
