// The CUDA emulator's memory-access counters: requests gathered from the lanes' accesses, their
// sectors and wavefronts, per launch and per access site (the model: counters.h). In the counting
// build this file also defines the hooks every instrumented load and store of a kernel calls.
#include "counters.h"

#include <dlfcn.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cuda_runtime_api.h"

namespace dabdetr_cuda_emulator::counters {

bool g_active = false;

namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kSectorBytes = 32;
constexpr int kBanks = 32;

// The counts of one kind of access (a space and load, store or atomic): requests and bytes; sectors
// and ideal sectors (global memory) or wavefronts and ideal wavefronts (shared memory); atomics'
// distinct addresses.
struct Counts {
  uint64_t requests = 0, sectors = 0, ideal_sectors = 0, bytes = 0, addresses = 0, wavefronts = 0,
           ideal_wavefronts = 0;
  void add(const Counts& o) {
    requests += o.requests;
    sectors += o.sectors;
    ideal_sectors += o.ideal_sectors;
    bytes += o.bytes;
    addresses += o.addresses;
    wavefronts += o.wavefronts;
    ideal_wavefronts += o.ideal_wavefronts;
  }
};

struct Site {
  Access kind;
  Space space;
  Counts counts;
};

struct Record {
  std::string kernel;
  dim3 grid, block;
  size_t dynamic_shared;
  std::map<std::pair<Space, Access>, Counts> totals;
  std::map<uintptr_t, Site> sites;
  std::unordered_set<uintptr_t> distinct_sectors;  // every global sector the launch touches
  uint64_t barriers = 0, shfl = 0, ldmatrix = 0, mma = 0;
};

// One warp-level request in the making: each lane's address.
struct Request {
  Access kind;
  Space space;
  unsigned size;
  std::vector<std::pair<int, uintptr_t>> lanes;  // (lane, address)
};

struct RequestKey {
  uintptr_t site;
  uint32_t occurrence;
  bool operator==(const RequestKey& o) const { return site == o.site && occurrence == o.occurrence; }
};
struct RequestKeyHash {
  size_t operator()(const RequestKey& k) const { return std::hash<uintptr_t>()(k.site * 31 + k.occurrence); }
};

// A thread's executions of each site in its current interval.
struct ThreadSites {
  uint32_t interval = 0;
  std::unordered_map<uintptr_t, uint32_t> executed;
};

std::vector<Record> g_records;
Record* g_record = nullptr;                                                           // the launch running
std::vector<std::map<uint32_t, std::unordered_map<RequestKey, Request, RequestKeyHash>>> g_pending;  // [warp][interval]
std::vector<ThreadSites> g_threads;                                                   // [thread of the block]

// The global request's sectors (added to the launch's), and the fewest its distinct bytes need from
// where the lowest starts in its sector (a contiguous run: what a coalesced request touches).
std::pair<uint64_t, uint64_t> global_sectors(const Request& r, std::unordered_set<uintptr_t>& launch_sectors) {
  std::unordered_set<uintptr_t> sectors, bytes;
  uintptr_t lowest = UINTPTR_MAX;
  for (const auto& [lane, address] : r.lanes) {
    for (uintptr_t s = address / kSectorBytes; s <= (address + r.size - 1) / kSectorBytes; ++s) sectors.insert(s);
    for (uintptr_t byte = address; byte < address + r.size; ++byte) bytes.insert(byte);
    lowest = std::min(lowest, address);
  }
  launch_sectors.insert(sectors.begin(), sectors.end());
  return {sectors.size(), (lowest % kSectorBytes + bytes.size() + kSectorBytes - 1) / kSectorBytes};
}

// The shared memory request's wavefronts and ideal wavefronts (counters.h).
std::pair<uint64_t, uint64_t> shared_wavefronts(const Request& r) {
  const int phase_lanes = r.size <= 4 ? 32 : r.size <= 8 ? 16 : 8;
  std::map<int, std::unordered_set<uintptr_t>> words;  // [phase]
  for (const auto& [lane, address] : r.lanes)
    for (uintptr_t w = address / 4; w <= (address + r.size - 1) / 4; ++w) words[lane / phase_lanes].insert(w);
  uint64_t wavefronts = 0, ideal = 0;
  for (const auto& [phase, set] : words) {
    int per_bank[kBanks] = {};
    for (const uintptr_t w : set) ++per_bank[w % kBanks];
    wavefronts += *std::max_element(per_bank, per_bank + kBanks);
    ideal += (set.size() + kBanks - 1) / kBanks;
  }
  return {wavefronts, ideal};
}

void finish(const Request& r, uintptr_t site) {
  Counts c;
  c.requests = 1;
  c.bytes = uint64_t(r.size) * r.lanes.size();
  if (r.space == Space::kShared) {
    std::tie(c.wavefronts, c.ideal_wavefronts) = shared_wavefronts(r);
  } else {
    std::tie(c.sectors, c.ideal_sectors) = global_sectors(r, g_record->distinct_sectors);
  }
  if (r.kind == Access::kAtomic) {
    std::unordered_set<uintptr_t> addresses;
    for (const auto& lane : r.lanes) addresses.insert(lane.second);
    c.addresses = addresses.size();
  }
  g_record->totals[{r.space, r.kind}].add(c);
  auto [it, inserted] = g_record->sites.try_emplace(site, Site{r.kind, r.space, {}});
  it->second.counts.add(c);
}

void finish_intervals(int warp, uint32_t before) {
  auto& pending = g_pending[warp];
  while (!pending.empty() && pending.begin()->first < before) {
    for (const auto& [key, request] : pending.begin()->second) finish(request, key.site);
    pending.erase(pending.begin());
  }
}

// Every request still pending, of every warp (a block or a launch is over).
void finish_all() {
  for (size_t warp = 0; warp < g_pending.size(); ++warp) finish_intervals(static_cast<int>(warp), UINT32_MAX);
}

// The library this file is part of, for sites as offsets in it (what addr2line reads).
uintptr_t library_base() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&library_base), &info) == 0) return 0;
  return reinterpret_cast<uintptr_t>(info.dli_fbase);
}

const char* space_name(Space s) { return s == Space::kGlobal ? "global" : "shared"; }
const char* access_name(Access a) { return a == Access::kLoad ? "load" : a == Access::kStore ? "store" : "atomic"; }

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// The keys of one kind of access in a record (docs/results/gpu_model.md): SPACE_ACCESS_requests, _sectors
// and _ideal_sectors (global) or _wavefronts and _ideal_wavefronts (shared), _bytes, and _addresses
// for atomics.
void write_counts(std::ostringstream& o, Space space, Access kind, const Counts& c) {
  const std::string p = std::string(space_name(space)) + "_" + access_name(kind) + "_";
  o << "\"" << p << "requests\": " << c.requests << ", ";
  if (space == Space::kGlobal) {
    o << "\"" << p << "sectors\": " << c.sectors << ", \"" << p << "ideal_sectors\": " << c.ideal_sectors << ", ";
  } else {
    o << "\"" << p << "wavefronts\": " << c.wavefronts << ", \"" << p << "ideal_wavefronts\": " << c.ideal_wavefronts
      << ", ";
  }
  if (kind == Access::kAtomic) o << "\"" << p << "addresses\": " << c.addresses << ", ";
  o << "\"" << p << "bytes\": " << c.bytes;
}

std::string to_json(const std::vector<Record>& records) {
  const uintptr_t base = library_base();
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < records.size(); ++i) {
    const Record& r = records[i];
    o << (i ? ",\n" : "\n") << "{\"kernel\": " << json_string(r.kernel) << ", \"grid\": [" << r.grid.x << ", "
      << r.grid.y << ", " << r.grid.z << "], \"block\": [" << r.block.x << ", " << r.block.y << ", " << r.block.z
      << "], \"dynamic_shared_bytes\": " << r.dynamic_shared;
    // Every kind of access, zero where the kernel has none: records compare key by key.
    Counts atomics;
    for (const Space space : {Space::kGlobal, Space::kShared})
      for (const Access kind : {Access::kLoad, Access::kStore, Access::kAtomic}) {
        const auto found = r.totals.find({space, kind});
        const Counts c = found == r.totals.end() ? Counts{} : found->second;
        o << ", ";
        write_counts(o, space, kind, c);
        if (kind == Access::kAtomic) atomics.add(c);
      }
    o << ", \"global_distinct_sectors\": " << r.distinct_sectors.size();
    o << ", \"atomic_requests\": " << atomics.requests << ", \"atomic_addresses\": " << atomics.addresses
      << ", \"barriers\": " << r.barriers << ", \"shfl\": " << r.shfl << ", \"ldmatrix\": " << r.ldmatrix
      << ", \"mma\": " << r.mma << ", \"sites\": [";
    bool first = true;
    for (const auto& [site, s] : r.sites) {
      // The call's return address less one: an address inside the instrumented access's call.
      o << (first ? "" : ", ") << "{\"offset\": " << (site - base - 1) << ", \"space\": \"" << space_name(s.space)
        << "\", \"access\": \"" << access_name(s.kind) << "\", ";
      write_counts(o, s.space, s.kind, s.counts);
      o << "}";
      first = false;
    }
    o << "]}";
  }
  o << "\n]";
  return o.str();
}

}  // namespace

void start() {
  g_records.clear();
  g_active = true;
}

std::string take() {
  g_active = false;
  std::string json = to_json(g_records);
  g_records.clear();
  return json;
}

void launch_begins(const char* kernel, dim3 grid, dim3 block, size_t dynamic_shared) {
  g_records.push_back(Record{kernel, grid, block, dynamic_shared, {}, {}});
  g_record = &g_records.back();
  const int threads = static_cast<int>(block.x * block.y * block.z);
  g_pending.assign((threads + kWarpSize - 1) / kWarpSize, {});
  g_threads.assign(threads, {});
}

void launch_ends() {
  finish_all();  // a failed launch's last block never ended
  g_record = nullptr;
}

void access(const Lane& lane, Access kind, Space space, uintptr_t site, uintptr_t address, unsigned size) {
  if (g_record == nullptr) return;
  ThreadSites& t = g_threads[lane.warp * kWarpSize + lane.lane];
  if (t.interval != lane.interval) {
    t.interval = lane.interval;
    t.executed.clear();
  }
  const uint32_t occurrence = t.executed[site]++;
  Request& r = g_pending[lane.warp][lane.interval][RequestKey{site, occurrence}];  // value-initialized: size 0
  if (r.lanes.empty()) {
    r.kind = kind;
    r.space = space;
  }
  r.size = std::max(r.size, size);
  r.lanes.emplace_back(lane.lane, address);
}

void intervals_done(int warp, uint32_t before) {
  if (g_record != nullptr) finish_intervals(warp, before);
}

void block_ends() {
  if (g_record == nullptr) return;
  finish_all();
  for (auto& t : g_threads) t = ThreadSites{};
}

void barrier(int warps) {
  if (g_record != nullptr) g_record->barriers += warps;
}

void collective(Collective kind, uintptr_t site, const unsigned char* const* rows) {
  if (g_record == nullptr) return;
  switch (kind) {
    case Collective::kShfl: ++g_record->shfl; break;
    case Collective::kMma: ++g_record->mma; break;
    case Collective::kLdmatrix: {
      ++g_record->ldmatrix;
      Request r{Access::kLoad, Space::kShared, 16, {}};
      for (int lane = 0; lane < kWarpSize; ++lane) r.lanes.emplace_back(lane, reinterpret_cast<uintptr_t>(rows[lane]));
      finish(r, site);
      break;
    }
  }
}

}  // namespace dabdetr_cuda_emulator::counters

#ifdef DABDETR_CUDA_EMULATOR_COUNTERS
namespace {

using dabdetr_cuda_emulator::counters::Access;

// One access of the running thread at the hook's call site (the instrumented instruction).
inline void count(Access kind, uintptr_t address, unsigned size, void* site) {
  namespace c = dabdetr_cuda_emulator::counters;
  if (!c::active()) return;
  c::Lane lane;
  c::Space space;
  if (c::locate(address, &lane, &space)) c::access(lane, kind, space, reinterpret_cast<uintptr_t>(site), address, size);
}

}  // namespace

// The hooks GCC's -fsanitize=kernel-address calls before each load and store of the kernels.
extern "C" {
#define DABDETR_COUNTING_HOOKS(n)                                                              \
  void __asan_load##n##_noabort(uintptr_t address) {                                           \
    count(Access::kLoad, address, n, __builtin_return_address(0));                             \
  }                                                                                            \
  void __asan_store##n##_noabort(uintptr_t address) {                                          \
    count(Access::kStore, address, n, __builtin_return_address(0));                            \
  }
DABDETR_COUNTING_HOOKS(1)
DABDETR_COUNTING_HOOKS(2)
DABDETR_COUNTING_HOOKS(4)
DABDETR_COUNTING_HOOKS(8)
DABDETR_COUNTING_HOOKS(16)
#undef DABDETR_COUNTING_HOOKS
void __asan_loadN_noabort(uintptr_t address, size_t size) {
  count(Access::kLoad, address, static_cast<unsigned>(size), __builtin_return_address(0));
}
void __asan_storeN_noabort(uintptr_t address, size_t size) {
  count(Access::kStore, address, static_cast<unsigned>(size), __builtin_return_address(0));
}
// Also called by instrumented code, with nothing to count.
void __asan_handle_no_return() {}
void __asan_before_dynamic_init(const char*) {}
void __asan_after_dynamic_init() {}
}

namespace dabdetr_cuda_emulator {

// atomicAdd of the counting build (cuda_runtime_api.h): counted at its caller's site in the kernel.
float counted_atomic_add(float* address, float value) {
  count(Access::kAtomic, reinterpret_cast<uintptr_t>(address), 4, __builtin_return_address(0));
  return emulated_atomic_add<float, uint32_t>(address, value);
}
double counted_atomic_add(double* address, double value) {
  count(Access::kAtomic, reinterpret_cast<uintptr_t>(address), 8, __builtin_return_address(0));
  return emulated_atomic_add<double, uint64_t>(address, value);
}

}  // namespace dabdetr_cuda_emulator
#endif
