-- Planted allocation churn: tables grown one slot at a time (no presizing, so
-- they rehash as they grow) and a string built with `..` in a loop (every step
-- allocates and interns a new, longer string).
local M = {}

function M.alloc_churn_work(n)
    local rows = {}
    for i = 1, n do
        local row = {}
        for j = 1, 16 do
            row[#row + 1] = i * j
        end
        rows[#rows + 1] = row
    end
    local s = ""
    for i = 1, n do
        s = s .. i .. ","
    end
    return #rows, #s
end

function M.churn()
    local n = math.min(tonumber(ngx.var.arg_n) or 2000, 100000)
    local rows, bytes = M.alloc_churn_work(n)
    ngx.say(rows, " rows, ", bytes, " bytes")
end

return M
