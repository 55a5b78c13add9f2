-- POST /api/login with {"user": ..., "password": ...} returns a bearer token.
local config = require("app.config")
local json = require("app.utils.json")
local response = require("app.utils.response")
local token = require("app.services.token")

local ngx = ngx

local M = {}

function M.login()
    if ngx.req.get_method() ~= "POST" then
        ngx.header["Allow"] = "POST, OPTIONS"
        return response.json(405, { error = "use POST" })
    end
    ngx.req.read_body()
    local body = json.decode(ngx.req.get_body_data() or "")
    if type(body) ~= "table" or type(body.user) ~= "string" or type(body.password) ~= "string" then
        return response.json(400, { error = "expected JSON {user, password}" })
    end
    local password = config.auth.users[body.user]
    if password == nil or password ~= body.password then
        return response.json(401, { error = "invalid credentials" })
    end
    local tok, exp = token.issue(body.user)
    response.json(200, { token = tok, token_type = "Bearer", expires_at = exp })
end

return M
