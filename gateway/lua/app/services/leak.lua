-- Planted problem: a module-level table that only ever grows (per worker).
-- Each entry holds a unique string, so nothing is shared or collectable.
-- A leak profiler should find `retained` growing under leak_grow.
local ngx = ngx

local M = {}

local retained = {}

function M.leak_grow(id, bytes)
    local n = #retained + 1
    retained[n] = {
        id = id,
        at = ngx.now(),
        -- The index makes the string unique even when clients reuse an id.
        blob = id .. ":" .. n .. string.rep("x", bytes),
    }
    return n
end

function M.leak_reset()
    -- Same table object, emptied: a leak tool keeps tracking one address.
    for i = #retained, 1, -1 do
        retained[i] = nil
    end
    return 0
end

return M
