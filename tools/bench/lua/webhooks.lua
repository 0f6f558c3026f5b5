-- Signed Terra webhooks, each request with its own X-Terra-Trace-Id.
--
-- wrk ... -s webhooks.lua URL -- DATA_FILE RUN_TAG
-- DATA_FILE lines: "B<TAB>body" (one per body, in order) and "S<TAB>body index<TAB>timestamp<TAB>header"
-- (the X-Terra-Signature header for that body at that timestamp; several timestamps cover a long run,
-- and each request uses the one nearest to now, well inside the receiver's +/-300 s tolerance).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local next_thread_id = 0

function setup(thread)
   bench_setup(thread)
   next_thread_id = next_thread_id + 1
   thread:set("thread_id", next_thread_id)
end

local bodies, signatures, tag, counter, headers

function init(args)
   bodies, signatures = {}, {}
   tag = args[2] or "run"
   counter = 0
   for line in io.lines(args[1]) do
      local kind, rest = line:match("^(%a)\t(.*)$")
      if kind == "B" then
         table.insert(bodies, rest)
         signatures[#bodies] = {}
      elseif kind == "S" then
         local index, stamp, header = rest:match("^(%d+)\t(%d+)\t(.*)$")
         table.insert(signatures[tonumber(index)], { tonumber(stamp), header })
      end
   end
   headers = { ["Content-Type"] = "application/json" }
end

function request()
   counter = counter + 1
   local index = ((counter + (thread_id or 1) * 7919) % #bodies) + 1
   local now, best, best_distance = os.time(), nil, nil
   for _, entry in ipairs(signatures[index]) do
      local distance = math.abs(entry[1] - now)
      if best_distance == nil or distance < best_distance then
         best, best_distance = entry[2], distance
      end
   end
   headers["X-Terra-Signature"] = best
   headers["X-Terra-Trace-Id"] = string.format("bench-%s-%d-%d", tag, thread_id or 0, counter)
   return wrk.format("POST", wrk.path, headers, bodies[index])
end
