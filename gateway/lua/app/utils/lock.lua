-- Dog-pile lock over a shared dict (lua-resty-lock is not packaged in Debian).
-- `add` is atomic across workers; waiters poll with ngx.sleep, which yields to
-- the event loop instead of blocking the worker.
local ngx = ngx
local min = math.min

local M = {}

local counter = 0

-- Returns a handle to pass to release, or nil and "timeout"/dict error.
function M.acquire(dict_name, key, timeout, exptime)
    local dict = ngx.shared[dict_name]
    counter = counter + 1
    -- The token lets release tell our lock from one taken after ours expired.
    local token = ngx.worker.pid() .. ":" .. counter
    local ok, err = dict:add(key, token, exptime)
    local waited, step = 0, 0.001
    while not ok do
        if err ~= "exists" then
            return nil, err
        end
        if waited >= timeout then
            return nil, "timeout"
        end
        step = min(step, timeout - waited)
        ngx.sleep(step)
        waited = waited + step
        step = min(step * 2, 0.1)
        ok, err = dict:add(key, token, exptime)
    end
    return { dict = dict, key = key, token = token }
end

function M.release(handle)
    if handle.dict:get(handle.key) == handle.token then
        handle.dict:delete(handle.key)
    end
end

return M
