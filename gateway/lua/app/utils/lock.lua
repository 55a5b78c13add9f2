-- A cross-worker mutex on a shared dict (lua-resty-lock is not packaged in
-- Debian): `add` succeeds for one holder; the others poll with a non-blocking sleep.
local M = {}
local dict = ngx.shared.gw_locks

-- True once held, or nil and "timeout".
function M.acquire(key, timeout)
    local waited, step = 0, 0.001
    while true do
        if dict:add(key, true, timeout) then
            return true
        end
        if waited >= timeout then
            return nil, "timeout"
        end
        ngx.sleep(step)
        waited = waited + step
        step = math.min(step * 2, 0.05)
    end
end

function M.release(key)
    dict:delete(key)
end

return M
