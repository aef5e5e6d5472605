// ApiServer: the control socket (--api-socket PATH). A Unix stream socket
// speaking line-delimited JSON (docs/api.md):
//
//   request  {"id": 7, "cmd": "pause", ...arguments}
//   reply    {"id": 7, "ok": true, ...result}  or  {"id": 7, "ok": false, "error": "..."}
//   event    {"event": "paused", "ts_ms": 1234.5, ...}   (to every client, unsolicited)
//
// One thread accepts clients and reads their lines; each request is handed
// to the handler on that thread, one at a time, so commands are serialized.
// A client that sends garbage gets an error reply and stays connected; a line
// longer than kMaxLine closes that client. Clients that stop reading lose
// events rather than block the server (bounded per-client output buffer).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "vmm/base/event_loop.h"
#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace vmm {

class ApiServer {
 public:
  static constexpr size_t kMaxLine = 64 * 1024;
  static constexpr size_t kMaxPendingOutput = 1 << 20;

  // Returns the reply body (without "id"/"ok"), or an Error for {"ok": false}.
  using Handler = std::function<Result<nlohmann::json>(const std::string& cmd,
                                                       const nlohmann::json& request)>;

  // Binds PATH (an existing socket file at PATH is replaced; any other file
  // there is an error) and starts the server thread.
  static Result<std::unique_ptr<ApiServer>> start(const std::string& path, Handler handler);
  ~ApiServer();

  // Replaces the request handler (thread-safe): the control socket stays the
  // same while what serves it changes (an incoming migration, then its VM).
  void set_handler(Handler handler);

  // Sends an event to every connected client. Thread-safe.
  void emit(const std::string& event, nlohmann::json fields = nlohmann::json::object());

  const std::string& path() const { return path_; }

 private:
  struct Client {
    UniqueFd fd;
    std::string in;
    std::string out;
  };
  ApiServer(std::string path, UniqueFd listener, std::unique_ptr<EventLoop> loop, Handler handler,
            UniqueFd wake);
  void on_accept();
  void on_client(int fd, uint32_t events);
  void handle_line(Client& c, const std::string& line);
  // These return false when they closed the client: `c` is freed then and
  // its fd number may already belong to someone else (mu_ held).
  [[nodiscard]] bool queue_output(Client& c, const std::string& text);
  [[nodiscard]] bool flush(Client& c);
  void close_client(int fd);

  std::string path_;
  UniqueFd listener_;
  std::unique_ptr<EventLoop> loop_;
  std::mutex handler_mu_;
  Handler handler_;  // handler_mu_
  UniqueFd wake_;  // emit() from other threads: flush pending output
  std::thread thread_;
  std::mutex mu_;
  std::map<int, std::unique_ptr<Client>> clients_;
};

}  // namespace vmm
