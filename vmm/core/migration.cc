#include "vmm/core/migration.h"

#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include <spdlog/spdlog.h>

#include "boot/x86_64/e820.h"
#include "vmm/api/api_server.h"
#include "vmm/core/vm.h"
#include "vmm/migration/protocol.h"
#include "vmm/snapshot/state_file.h"

namespace vmm {

namespace mig = vmm::migration;

namespace {

constexpr uint32_t kPageSize = 4096;
constexpr int kIoTimeoutMs = 30000;  // one frame, either way
constexpr size_t kSendBatchBytes = 1 << 20;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

uint64_t count_bits(const std::vector<std::vector<uint64_t>>& bits) {
  uint64_t n = 0;
  for (const auto& r : bits)
    for (uint64_t w : r) n += static_cast<uint64_t>(__builtin_popcountll(w));
  return n;
}

// The destination's answer to `what` must be a `want` frame; an Error frame
// carries its reason.
Result<void> expect_answer(const mig::Frame& f, mig::FrameType want, const char* what) {
  if (f.type == mig::FrameType::kError) {
    VMM_TRY(auto why, mig::decode_error(f.payload));
    return make_error("destination: {}", why);
  }
  if (f.type != want)
    return make_error("destination answered {} with {}", what, mig::frame_type_name(f.type));
  return ok();
}

mig::Hello local_hello(const VmConfig& cfg, const MachineSpec& spec) {
  mig::Hello h;
  h.vmm_version = "vmm 0.1";
  h.cpu_template = cfg.cpu_template;
  h.config = encode_machine_spec(spec);
  h.mem_bytes = cfg.mem_bytes;
  h.page_size = kPageSize;
  return h;
}

}  // namespace

Result<MigrateOptions> parse_migrate_request(const nlohmann::json& req) {
  MigrateOptions o;
  if (!req.contains("uri") || !req["uri"].is_string())
    return make_error("migrate needs \"uri\": tcp:HOST:PORT or unix:PATH");
  o.uri = req["uri"].get<std::string>();
  VMM_CHECK(mig::parse_uri(o.uri));
  auto num = [&](const char* key, uint32_t& out, uint32_t lo, uint32_t hi) -> Result<void> {
    if (!req.contains(key)) return ok();
    const auto& v = req[key];
    // Any JSON integer (nlohmann parses "50" as unsigned, but a signed 50 is
    // just as good); huge unsigned values read as negative and are refused.
    if (!v.is_number_integer() || v.get<int64_t>() < int64_t{lo} || v.get<int64_t>() > int64_t{hi})
      return make_error("migrate: \"{}\" must be an integer in [{}, {}]", key, lo, hi);
    out = static_cast<uint32_t>(v.get<int64_t>());
    return ok();
  };
  VMM_CHECK(num("downtime_ms", o.downtime_ms, 1, 600000));
  VMM_CHECK(num("bandwidth_mibs", o.bandwidth_mibs, 0, 1000000));
  VMM_CHECK(num("timeout_s", o.timeout_s, 0, 86400));
  VMM_CHECK(num("max_rounds", o.max_rounds, 1, 1000));
  if (req.contains("on_timeout")) {
    const auto& v = req["on_timeout"];
    if (v == "stop-copy") o.fail_if_not_converged = false;
    else if (v == "fail") o.fail_if_not_converged = true;
    else return make_error("migrate: \"on_timeout\" must be \"stop-copy\" or \"fail\"");
  }
  return o;
}

// ------------------------------------------------------------------ source --

MigrationSource::~MigrationSource() {
  abort();
  join();
}

Result<void> MigrationSource::start(MigrateOptions opts) {
  std::lock_guard lk(mu_);
  if (active_) return make_error("a migration is already running (migrate-cancel stops it)");
  if (thread_.joinable()) thread_.join();  // a finished one
  cancel_ = false;
  active_ = true;
  status_ = {{"state", "active"}, {"uri", opts.uri}};
  thread_ = std::thread([this, opts = std::move(opts)] { run(opts); });
  return ok();
}

bool MigrationSource::cancel() {
  std::lock_guard lk(mu_);
  if (!active_) return false;
  cancel_ = true;  // seen between frames and in bandwidth waits; Cancel goes to the peer
  cv_.notify_all();
  return true;
}

void MigrationSource::abort() {
  std::lock_guard lk(mu_);
  if (!active_) return;
  cancel_ = true;
  cv_.notify_all();
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);  // unblock a read or write in progress
}

void MigrationSource::join() {
  std::thread t;
  {
    std::lock_guard lk(mu_);
    t = std::move(thread_);
  }
  if (t.joinable()) t.join();
}

nlohmann::json MigrationSource::status() const {
  std::lock_guard lk(mu_);
  return status_;
}

void MigrationSource::progress(const nlohmann::json& p) {
  {
    std::lock_guard lk(mu_);
    for (auto it = p.begin(); it != p.end(); ++it) status_[it.key()] = it.value();
  }
  if (auto* api = vm_.api()) api->emit("migration-progress", p);
}

void MigrationSource::run(MigrateOptions opts) {
  auto r = migrate(opts);
  nlohmann::json st;
  bool done = r.ok();
  {
    std::lock_guard lk(mu_);
    fd_ = -1;
    if (done) {
      st = *r;
      st["state"] = "completed";
    } else {
      std::string why = r.error().to_string();
      if (cancel_ && why != "cancelled") why = "cancelled (" + why + ")";
      st = {{"state", cancel_ ? "cancelled" : "failed"}, {"error", why}};
    }
    st["uri"] = opts.uri;
    status_ = st;
    active_ = false;
  }
  if (done) {
    spdlog::info("migration to {} completed: {:.1f} ms total, {:.1f} ms downtime, {} rounds, {} "
                 "bytes",
                 opts.uri, st["total_ms"].get<double>(), st["downtime_ms"].get<double>(),
                 st["rounds"].get<int>(), st["bytes"].get<uint64_t>());
    if (auto* api = vm_.api()) api->emit("migration-done", st);
    vm_.request_stop({kExitOk, "migrated to " + opts.uri});
  } else {
    spdlog::error("migration to {} failed: {}; the guest keeps running here", opts.uri,
                  r.error().to_string());
    if (auto* api = vm_.api()) api->emit("migration-failed", st);
  }
}

Result<nlohmann::json> MigrationSource::migrate(const MigrateOptions& opts) {
  const auto t0 = Clock::now();
  VMM_TRY(auto uri, mig::parse_uri(opts.uri));
  if (vm_.state() != Vm::RunState::kRunning && vm_.state() != Vm::RunState::kPaused)
    return make_error("the VM is {}", Vm::state_name(vm_.state()));
  VMM_TRY(auto sock, mig::connect_to(uri, static_cast<int>(opts.connect_timeout_ms)));
  {
    std::lock_guard lk(mu_);
    if (cancel_) return make_error("cancelled");
    fd_ = sock.get();
  }
  mig::FrameWriter w(sock.get());
  mig::FrameReader rd(sock.get());
  const auto deadline = opts.timeout_s ? t0 + std::chrono::seconds(opts.timeout_s)
                                       : Clock::time_point::max();
  auto check_cancel = [&]() -> Result<void> {
    if (cancel_) return make_error("cancelled");
    if (Clock::now() > deadline) return make_error("timed out after {} s", opts.timeout_s);
    return ok();
  };
  // Tell the destination why, if it can still hear it (best effort).
  auto tell_peer = [&](const Error& e) {
    auto payload = cancel_ ? mig::encode_cancel(e.to_string()) : mig::encode_error(e.to_string());
    (void)w.write_frame(cancel_ ? mig::FrameType::kCancel : mig::FrameType::kError, payload, 1000);
  };

  // ---- Hello: the destination checks that its VM matches this one.
  {
    VMM_TRY(auto hello, mig::encode_hello(local_hello(vm_.config(), vm_.machine_spec())));
    VMM_CHECK(w.write_frame(mig::FrameType::kHello, hello, kIoTimeoutMs));
    VMM_TRY(auto f, rd.read_frame(kIoTimeoutMs));
    VMM_CHECK(expect_answer(f, mig::FrameType::kHelloReply, "Hello"));
    VMM_TRY(auto reply, mig::decode_hello_reply(f.payload));
    if (!reply.accepted) return make_error("destination refused: {}", reply.reason);
  }

  // ---- Pre-copy rounds.
  auto dirty_log = vm_.start_dirty_log();
  if (!dirty_log.ok()) {
    vm_.stop_dirty_log();  // it may have got part of the way
    tell_peer(dirty_log.error());
    return dirty_log.error();
  }
  const bool manual = *dirty_log;
  const GuestMemory& mem = vm_.memory();
  const auto& regions = mem.regions();
  bool we_paused = false;
  // The guest resumes first: turning dirty logging off rewrites every
  // memory slot, one SRCU grace period each (milliseconds on this host),
  // and a running guest does not need to wait for that.
  auto cleanup = [&] {
    if (we_paused) {
      auto r = vm_.resume();
      if (!r.ok()) spdlog::error("migration: resuming the guest failed: {}", r.error().to_string());
    }
    vm_.stop_dirty_log();
  };

  // Round 0: every page that may hold data. Pages of anonymous RAM the
  // guest never touched are zero on the destination already (its RAM is
  // fresh too) and are not even read here; one touched after this point is
  // in the dirty log (tracking is on).
  std::vector<std::vector<uint64_t>> dirty(regions.size()), next;
  uint64_t untouched = 0;
  for (size_t i = 0; i < regions.size(); ++i) {
    auto r = mem.maybe_nonzero_pages(i);
    if (!r.ok()) {
      cleanup();
      return r.error();
    }
    dirty[i] = std::move(*r);
    untouched += regions[i].pages();
  }
  untouched -= count_bits(dirty);
  // 1 MiB frames: the frame is copied, CRC'd and handed to the socket while
  // it is still in cache (16 MiB frames went to memory between the passes).
  mig::MemPagesBuilder batch(kPageSize, kSendBatchBytes);
  uint64_t total_pages = 0, zero_pages = 0;
  const uint64_t cap_bps = uint64_t{opts.bandwidth_mibs} << 20;

  // Sends every page set in `bits` and clears them. Returns bytes written.
  auto send_pages = [&](std::vector<std::vector<uint64_t>>& bits, bool allow_cancel)
      -> Result<uint64_t> {
    const uint64_t start_bytes = w.bytes_written();
    const auto start = Clock::now();
    auto flush = [&]() -> Result<void> {
      if (batch.empty()) return ok();
      VMM_CHECK(w.write_frame(mig::FrameType::kMemPages, batch.finish(), kIoTimeoutMs));
      batch.reset();
      if (allow_cancel) VMM_CHECK(check_cancel());
      if (cap_bps) {  // sleep until the bytes so far fit the cap
        double want_s = static_cast<double>(w.bytes_written() - start_bytes) / cap_bps;
        auto due = start + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(want_s));
        std::unique_lock lk(mu_);
        cv_.wait_until(lk, due, [&] { return allow_cancel && cancel_.load(); });
        lk.unlock();
        if (allow_cancel) VMM_CHECK(check_cancel());
      }
      return ok();
    };
    for (size_t i = 0; i < regions.size(); ++i) {
      const auto& reg = regions[i];
      for (size_t wi = 0; wi < bits[i].size(); ++wi) {
        uint64_t word = bits[i][wi];
        bits[i][wi] = 0;
        while (word) {
          int b = __builtin_ctzll(word);
          word &= word - 1;
          uint64_t page = wi * 64 + static_cast<uint64_t>(b);
          if (page >= reg.pages()) break;
          if (!batch.has_room(false)) VMM_CHECK(flush());
          std::span<const uint8_t> data(reg.host() + page * kPageSize, kPageSize);
          VMM_TRY(bool zero, batch.add(reg.start + page * kPageSize, data));
          ++total_pages;
          zero_pages += zero;
        }
      }
    }
    VMM_CHECK(flush());
    return w.bytes_written() - start_bytes;
  };

  uint32_t round = 0;
  uint64_t prev_remaining = UINT64_MAX;
  double bandwidth_bps = 0;
  bool converged = false;
  auto result = [&]() -> Result<nlohmann::json> {
    for (;; ++round) {
      VMM_CHECK(check_cancel());
      uint64_t pages_this_round = count_bits(dirty);
      auto rs = Clock::now();
      VMM_TRY(uint64_t bytes, send_pages(dirty, true));
      double secs = std::max(1e-6, ms_between(rs, Clock::now()) / 1000);
      // Bandwidth as measured on this round (the first, big round dominates
      // early; later ones adapt).
      if (bytes > 256 * 1024 || bandwidth_bps == 0) bandwidth_bps = bytes / secs;
      VMM_CHECK(vm_.harvest_dirty(next));
      uint64_t remaining = count_bits(next);
      VMM_CHECK(w.write_frame(mig::FrameType::kRoundEnd,
                              mig::encode_round_end({round, pages_this_round, remaining}),
                              kIoTimeoutMs));
      double expected_ms = remaining * (kPageSize + 8.0) / bandwidth_bps * 1000;
      progress({{"round", round},
                {"transferred_bytes", w.bytes_written()},
                {"round_pages", pages_this_round},
                {"remaining_pages", remaining},
                {"remaining_bytes", remaining * kPageSize},
                {"dirty_rate_mibs", remaining * double{kPageSize} / secs / (1 << 20)},
                {"bandwidth_mibs", bandwidth_bps / (1 << 20)},
                {"expected_downtime_ms", expected_ms},
                {"elapsed_ms", ms_between(t0, Clock::now())}});
      std::swap(dirty, next);
      bool out_of_rounds = round + 1 >= opts.max_rounds;
      // It fits the target: stop, unless the rounds are still shrinking the
      // dirty set fast (each one re-protects the pages, which slows a
      // dirtying guest down): then one more round usually leaves less for
      // the downtime, at the cost of one short round.
      bool shrinking = remaining > 64 && remaining * 2 <= prev_remaining;
      prev_remaining = remaining;
      if (expected_ms <= opts.downtime_ms && (!shrinking || out_of_rounds)) {
        converged = true;
        break;
      }
      if (expected_ms <= opts.downtime_ms) continue;
      bool out_of_time = opts.timeout_s && Clock::now() > deadline;
      if (out_of_rounds || out_of_time) {
        if (opts.fail_if_not_converged)
          return make_error("did not converge in {} round(s): {} pages dirty, expected downtime "
                            "{:.0f} ms > {} ms",
                            round + 1, remaining, expected_ms, opts.downtime_ms);
        break;  // stop and copy
      }
    }

    // ---- Stop and copy: the guest pauses here; downtime starts.
    VMM_CHECK(check_cancel());
    const auto pause_at = Clock::now();
    bool was_running = vm_.state() == Vm::RunState::kRunning;
    VMM_CHECK(vm_.pause());
    we_paused = was_running;
    VMM_CHECK(vm_.harvest_dirty(dirty));
    uint64_t final_pages = count_bits(dirty);
    VMM_CHECK(send_pages(dirty, false));
    VMM_TRY(auto tree, vm_.save_state_tree());
    VMM_TRY(auto state, snapshot::encode_state(vm_.state_header(), tree));
    VMM_CHECK(w.write_frame(mig::FrameType::kState, state, kIoTimeoutMs));
    VMM_CHECK(w.write_frame(mig::FrameType::kComplete, {}, kIoTimeoutMs));
    const auto sent_at = Clock::now();
    auto fr = rd.read_frame(static_cast<int>(opts.ack_timeout_ms));
    if (!fr.ok())
      return make_error("no Ack from the destination after Complete ({}); the guest resumes "
                        "here, but the destination may have resumed it too",
                        fr.error().to_string());
    const auto& f = *fr;
    VMM_CHECK(expect_answer(f, mig::FrameType::kAck, "Complete"));
    VMM_TRY(auto ack, mig::decode_ack(f.payload));
    if (!ack.ok) return make_error("destination could not resume the guest: {}", ack.reason);
    const auto acked_at = Clock::now();
    // From here the guest is the destination's: never resume it here.
    we_paused = false;
    return nlohmann::json{{"total_ms", ms_between(t0, acked_at)},
                          {"downtime_ms", ms_between(pause_at, acked_at)},
                          {"final_send_ms", ms_between(pause_at, sent_at)},
                          {"rounds", round + 2},  // pre-copy rounds + the final one
                          {"converged", converged},
                          {"bytes", w.bytes_written()},
                          {"pages", total_pages},
                          {"zero_pages", zero_pages},
                          {"untouched_pages", untouched},
                          {"final_pages", final_pages},
                          {"state_bytes", state.size()},
                          {"manual_dirty_protect", manual},
                          {"bandwidth_mibs", bandwidth_bps / (1 << 20)}};
  }();
  if (!result.ok()) tell_peer(result.error());
  cleanup();
  return result;
}

// ------------------------------------------------------------- destination --

Result<std::unique_ptr<Vm>> IncomingMigration::receive(const VmConfig& cfg,
                                                       const IncomingOptions& opts) {
  VMM_TRY(auto uri, mig::parse_uri(opts.uri));
  VMM_TRY(auto listener, mig::listen_on(uri));
  spdlog::info("waiting for a migration on {}", listener.uri().to_string());
  {
    std::lock_guard lk(mu_);
    status_["uri"] = listener.uri().to_string();
  }
  emit_("migration-incoming-listening", {{"uri", listener.uri().to_string()}});
  set_fd(&listen_fd_, listener.fd());
  auto accepted = mig::accept_one(
      listener.fd(), opts.accept_timeout_s ? static_cast<int>(opts.accept_timeout_s * 1000) : -1);
  set_fd(&listen_fd_, -1);
  if (cancel_) return make_error("cancelled on the control socket");
  if (!accepted.ok()) return std::move(accepted).error();
  UniqueFd sock = std::move(*accepted);
  set_fd(&sock_fd_, sock.get());
  struct Unset {
    IncomingMigration* m;
    ~Unset() { m->set_fd(&m->sock_fd_, -1); }
  } unset{this};
  const auto t0 = Clock::now();
  set_state("receiving");
  emit_("migration-incoming-connected", nlohmann::json::object());
  mig::FrameReader rd(sock.get());
  mig::FrameWriter w(sock.get());
  const int idle_ms = opts.idle_timeout_s ? static_cast<int>(opts.idle_timeout_s * 1000) : -1;
  auto fail = [&](const Error& e) -> Error {
    if (cancel_) return make_error("cancelled on the control socket");
    (void)w.write_frame(mig::FrameType::kError, mig::encode_error(e.to_string()), 1000);
    return e;
  };

  auto hfr = rd.read_frame(idle_ms);
  if (!hfr.ok()) return fail(hfr.error());
  auto& hf = *hfr;
  if (hf.type != mig::FrameType::kHello)
    return fail(make_error("expected Hello, got {}", mig::frame_type_name(hf.type)));
  VMM_TRY(auto hello, mig::decode_hello(hf.payload));
  // The source describes its guest's machine; the disks and TAPs are this
  // command line's, checked against that description.
  VmConfig local = cfg;
  auto devices = [&]() -> Result<std::vector<std::shared_ptr<virtio::WorkerDevice>>> {
    auto saved = parse_machine_spec(hello.config);
    if (!saved.ok()) return make_error("Hello config: {}", saved.error().to_string());
    VMM_TRY(auto devs, Vm::open_devices_like(*saved, local, "source"));
    VMM_CHECK(mig::check_hello(hello, local_hello(local, machine_spec_of(local, devs))));
    return devs;
  }();
  if (!devices.ok()) {
    (void)w.write_frame(mig::FrameType::kHelloReply,
                        mig::encode_hello_reply({false, devices.error().to_string()}), 1000);
    return make_error("refused the incoming migration: {}", devices.error().to_string());
  }
  VMM_CHECK(w.write_frame(mig::FrameType::kHelloReply, mig::encode_hello_reply({true, ""}),
                          kIoTimeoutMs));

  auto ranges = boot::guest_ram_ranges(local.mem_bytes);
  VMM_TRY(auto fresh, GuestMemory::create_anonymous(ranges, local.thp));
  // The VM is built now, while pages arrive (KVM VM, memory slots, devices,
  // vCPUs): only the state is left for the downtime. It does not run until
  // the state is applied.
  auto prepared = Vm::prepare_restore(local, std::move(fresh), std::move(*devices));
  if (!prepared.ok()) return fail(prepared.error());
  std::unique_ptr<Vm> vm = std::move(*prepared);
  const GuestMemory& mem = vm->memory();
  std::vector<mig::RamRange> ram;
  for (auto [s, n] : ranges) ram.push_back({s, n});
  // Pages written so far: a zero page over one of them must clear it; over
  // an untouched one (still the kernel's zero page) it costs nothing.
  std::vector<bool> written;
  uint64_t pages = 0, data_pages = 0, rounds = 0;
  std::vector<uint8_t> state;
  for (;;) {
    auto fr = rd.read_frame(idle_ms);
    if (!fr.ok()) return fail(fr.error());
    const auto& f = *fr;
    switch (f.type) {
      case mig::FrameType::kMemPages: {
        auto view = mig::decode_mem_pages(f.payload, kPageSize, ram);
        if (!view.ok()) return fail(view.error());
        for (const auto& p : *view) {
          auto span = mem.span(p.gpa, kPageSize);
          if (!span.ok()) return fail(span.error());
          uint64_t idx = p.gpa / kPageSize;
          if (idx >= written.size()) written.resize(idx + 1, false);
          if (p.zero) {
            if (written[idx]) std::memset(span->data(), 0, kPageSize);
          } else {
            std::memcpy(span->data(), p.data.data(), kPageSize);
            written[idx] = true;
            ++data_pages;
          }
          ++pages;
        }
        std::lock_guard lk(mu_);
        status_["pages"] = pages;
        status_["data_pages"] = data_pages;
        status_["bytes"] = status_.value("bytes", uint64_t{0}) + f.payload.size();
        break;
      }
      case mig::FrameType::kRoundEnd: {
        auto re = mig::decode_round_end(f.payload);
        if (!re.ok()) return fail(re.error());
        ++rounds;
        spdlog::info("migration: round {} received ({} pages, {} dirty at its end)", re->round,
                     re->pages_sent, re->dirty_remaining);
        {
          std::lock_guard lk(mu_);
          status_["rounds"] = rounds;
        }
        emit_("migration-incoming-round", {{"round", re->round},
                                           {"pages_sent", re->pages_sent},
                                           {"dirty_remaining", re->dirty_remaining}});
        break;
      }
      case mig::FrameType::kState: {
        auto s = mig::decode_state_payload(f.payload);
        if (!s.ok()) return fail(s.error());
        state.assign(s->begin(), s->end());
        break;
      }
      case mig::FrameType::kComplete: {
        if (auto c = mig::decode_complete(f.payload); !c.ok()) return fail(c.error());
        set_state("applying");
        auto apply = [&]() -> Result<void> {
          if (state.empty()) return make_error("Complete before any State frame");
          VMM_TRY(auto file, snapshot::decode_state(state, "migration state"));
          return vm->apply_state(file);
        };
        if (auto ar = apply(); !ar.ok()) {
          (void)w.write_frame(mig::FrameType::kAck, mig::encode_ack({false, ar.error().to_string()}),
                              1000);
          return make_error("incoming migration: {}", ar.error().to_string());
        }
        VMM_CHECK(w.write_frame(mig::FrameType::kAck, mig::encode_ack({true, ""}), kIoTimeoutMs));
        double ms = ms_between(t0, Clock::now());
        spdlog::info("incoming migration complete: {} pages ({} with data), {} rounds, {} state "
                     "bytes, {:.1f} ms since the source connected",
                     pages, data_pages, rounds, state.size(), ms);
        emit_("migration-incoming-done",
              {{"pages", pages}, {"data_pages", data_pages}, {"rounds", rounds}, {"ms", ms}});
        return vm;
      }
      case mig::FrameType::kError: {
        auto why = mig::decode_error(f.payload);
        return make_error("the source gave up: {}", why.ok() ? *why : why.error().to_string());
      }
      case mig::FrameType::kCancel: {
        auto why = mig::decode_cancel(f.payload);
        return make_error("the source cancelled: {}", why.ok() ? *why : why.error().to_string());
      }
      default:
        return fail(make_error("unexpected {} frame during a migration",
                               mig::frame_type_name(f.type)));
    }
  }
}

Result<std::unique_ptr<Vm>> IncomingMigration::run(const VmConfig& cfg,
                                                   const IncomingOptions& opts) {
  t0_ = Clock::now();
  auto r = receive(cfg, opts);
  if (r.ok()) {
    set_state("done");
  } else {
    set_state(cancel_ ? "cancelled" : "failed");
    {
      std::lock_guard lk(mu_);
      status_["error"] = r.error().to_string();
    }
    emit_("migration-incoming-failed", {{"error", r.error().to_string()}});
  }
  return r;
}

void IncomingMigration::set_state(const char* state) {
  std::lock_guard lk(mu_);
  status_["state"] = state;
}

void IncomingMigration::set_fd(int* slot, int fd) {
  std::lock_guard lk(mu_);
  *slot = fd;
  // A cancel that came before the fd existed still ends the wait on it.
  if (fd >= 0 && cancel_) ::shutdown(fd, SHUT_RDWR);
}

nlohmann::json IncomingMigration::status() const {
  std::lock_guard lk(mu_);
  nlohmann::json s = status_;
  s["elapsed_ms"] = ms_between(t0_, Clock::now());
  return s;
}

bool IncomingMigration::cancel() {
  std::lock_guard lk(mu_);
  std::string st = status_.value("state", "");
  if (st != "listening" && st != "receiving") return false;
  cancel_ = true;
  for (int fd : {listen_fd_, sock_fd_})
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  return true;
}

Result<nlohmann::json> IncomingMigration::handle_api(const std::string& cmd,
                                                     const nlohmann::json&) {
  if (cmd == "status")
    return nlohmann::json{{"state", "incoming"}, {"migration", status()}};
  if (cmd == "migrate-cancel" || cmd == "shutdown") {
    if (!cancel()) return make_error("the incoming migration is past cancelling");
    return nlohmann::json::object();
  }
  return make_error("'{}' is not available while a migration is being received (status, "
                    "migrate-cancel, shutdown)",
                    cmd);
}

}  // namespace vmm
