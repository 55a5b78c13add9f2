-- Signed tokens: base64url(json claims) "." base64url(hmac_sha1(secret, part1)).
-- A JWT without the header, which is all this gateway needs.
local b64 = require("ngx.base64")
local config = require("app.config")
local json = require("app.utils.json")

local ngx = ngx
local byte = string.byte
local bxor, bor = bit.bxor, bit.bor

local M = {}

local function sign(payload)
    return b64.encode_base64url(ngx.hmac_sha1(config.auth.secret, payload))
end

-- Compares every byte so the time taken does not reveal the matching prefix.
local function equal(a, b)
    if #a ~= #b then
        return false
    end
    local diff = 0
    for i = 1, #a do
        diff = bor(diff, bxor(byte(a, i), byte(b, i)))
    end
    return diff == 0
end

function M.issue(user)
    local exp = ngx.time() + config.auth.token_ttl
    local payload = b64.encode_base64url(json.encode({ sub = user, exp = exp }))
    return payload .. "." .. sign(payload), exp
end

-- Returns the claims table, or nil and a reason.
function M.verify(token)
    local payload, sig = token:match("^([%w%-_]+)%.([%w%-_]+)$")
    if not payload then
        return nil, "malformed token"
    end
    if not equal(sig, sign(payload)) then
        return nil, "bad signature"
    end
    local claims = json.decode(b64.decode_base64url(payload) or "")
    if type(claims) ~= "table" or type(claims.exp) ~= "number" then
        return nil, "malformed claims"
    end
    if claims.exp < ngx.time() then
        return nil, "token expired"
    end
    return claims
end

return M
