// Live migration driver (docs/migration.md): pre-copy over TCP or a Unix
// socket, the wire protocol of vmm/migration/protocol.h, device and vCPU
// state through the same serializer as snapshots (Vm::save_state_tree).
//
// Source: MigrationSource runs one migration on its own thread, started by
// the control socket's "migrate" command: dirty logging on, every page sent,
// then rounds of the pages dirtied meanwhile until the rest fits the
// downtime target at the measured bandwidth (or a round/time limit), then
// pause, last pages, state, Complete, and the destination's Ack. On Ack the
// source VM stops (exit 0); on any failure before it, the guest keeps
// running on the source (resumed if the migration had paused it).
//
// Destination: IncomingMigration::run() listens, checks the source's Hello
// against its own configuration, receives memory into fresh anonymous RAM
// and builds the VM from the state only once everything has arrived: until
// then nothing runs, and any failure leaves no VM behind. Its control socket
// answers status (with progress) and migrate-cancel meanwhile.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "vmm/base/result.h"
#include "vmm/core/config.h"

namespace vmm {

class Vm;
using Clock = std::chrono::steady_clock;

struct MigrateOptions {
  std::string uri;               // tcp:HOST:PORT | unix:PATH
  uint32_t downtime_ms = 300;    // target for the final stop-and-copy
  uint32_t bandwidth_mibs = 0;   // cap; 0 = unlimited
  uint32_t timeout_s = 0;        // whole migration; 0 = none
  uint32_t max_rounds = 30;      // pre-copy rounds before giving up converging
  // When the dirty set does not converge within max_rounds / timeout_s:
  // "stop-copy" pauses and sends the rest anyway (longer downtime); "fail"
  // gives up and leaves the guest running here.
  bool fail_if_not_converged = false;
  uint32_t connect_timeout_ms = 10000;
  uint32_t ack_timeout_ms = 60000;  // destination builds its VM before acking
};

// Parses the "migrate" request fields (uri, downtime_ms, bandwidth_mibs,
// timeout_s, max_rounds, on_timeout: "stop-copy" | "fail").
Result<MigrateOptions> parse_migrate_request(const nlohmann::json& req);

class MigrationSource {
 public:
  explicit MigrationSource(Vm& vm) : vm_(vm) {}
  ~MigrationSource();  // cancels and joins

  // Starts a migration thread; refused while one is running.
  Result<void> start(MigrateOptions opts);
  // Asks the running migration to stop; it fails with "cancelled" and the
  // guest keeps running here. Returns false if none is running.
  bool cancel();
  // cancel() and also shut the connection down so that a blocked read or
  // write returns now (VM teardown).
  void abort();
  // For the status command: {"state": none|active|completed|failed|cancelled, ...}.
  nlohmann::json status() const;
  bool active() const { return active_; }
  void join();

 private:
  void run(MigrateOptions opts);
  Result<nlohmann::json> migrate(const MigrateOptions& opts);
  void progress(const nlohmann::json& p);

  Vm& vm_;
  std::thread thread_;
  std::atomic<bool> cancel_{false};
  std::atomic<bool> active_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int fd_ = -1;  // the connection while one is open (cancel shuts it down), mu_
  nlohmann::json status_ = {{"state", "none"}};
};

// Destination side of `vmm --incoming URI`.
struct IncomingOptions {
  std::string uri;
  uint32_t accept_timeout_s = 0;  // waiting for the source; 0 = forever
  uint32_t idle_timeout_s = 60;   // max silence once connected
};

// One incoming migration. run() does the work on the calling thread and
// returns the VM, restored and ready to run(), or an error (exit 1; nothing
// was started). The control socket serves the destination from the start:
// handle_api() (status with progress, migrate-cancel, shutdown) and the
// events migration-incoming-{listening,connected,round,done,failed} are safe
// from the API server's thread while run() works.
class IncomingMigration {
 public:
  using Emit = std::function<void(const std::string& event, nlohmann::json fields)>;
  explicit IncomingMigration(Emit emit) : emit_(std::move(emit)) {}

  Result<std::unique_ptr<Vm>> run(const VmConfig& cfg, const IncomingOptions& opts);
  Result<nlohmann::json> handle_api(const std::string& cmd, const nlohmann::json& req);
  // {"state": listening|receiving|applying|done|failed|cancelled, "uri",
  //  "pages", "data_pages", "rounds", "bytes", "elapsed_ms", "error"?}
  nlohmann::json status() const;
  // Ends a run() in progress (it fails with "cancelled"): unblocks its
  // accept or read by shutting the socket down. False if nothing to cancel.
  bool cancel();

 private:
  Result<std::unique_ptr<Vm>> receive(const VmConfig& cfg, const IncomingOptions& opts);
  void set_state(const char* state);
  void set_fd(int* slot, int fd);

  Emit emit_;
  std::atomic<bool> cancel_{false};
  mutable std::mutex mu_;
  int listen_fd_ = -1, sock_fd_ = -1;  // while open (cancel shuts them down), mu_
  nlohmann::json status_ = {{"state", "listening"}};  // mu_
  Clock::time_point t0_ = Clock::now();
};

}  // namespace vmm
