-- wrk script for memstore: PUT /store/{key} with a 100-byte body. Keys are distinct across wrk
-- threads (each gets its own id in setup) and connections (one counter per thread). Used for the
-- memory measurement of docs/performance.md (1,000,000 keys of 100-byte values).
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
end

-- KEYS_PER_THREAD=N stops each wrk thread after N keys (wrk keeps its -d duration), so a run
-- ends at a known key count: 2 threads x 525000 = 1,050,000 keys.
local counter = 0
local limit = tonumber(os.getenv("KEYS_PER_THREAD") or "0")
local value = string.rep("v", 100)
response = function()
  if limit > 0 and counter >= limit then
    wrk.thread:stop()
  end
end
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/store/t" .. id .. "-" .. counter, nil, value)
end
