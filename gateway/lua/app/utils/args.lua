local ngx = ngx
local floor = math.floor

local M = {}

-- Numeric query argument clamped to [lo, hi]; missing or junk gives default.
function M.num(name, default, lo, hi)
    local v = tonumber(ngx.var["arg_" .. name])
    if v == nil or v ~= v then
        return default
    end
    if v < lo then
        return lo
    end
    if v > hi then
        return hi
    end
    return v
end

-- Integer query argument clamped to [lo, hi] (integers); missing or junk gives default.
function M.int(name, default, lo, hi)
    return floor(M.num(name, default, lo, hi))
end

return M
