// Runs the snapshot-inspect executable (SNAPSHOT_INSPECT, set by CMake).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/unit/snapshot/sample_tree.h"
#include "vmm/snapshot/state_file.h"

namespace vmm::snapshot {
namespace {

namespace fs = std::filesystem;

struct Run {
  int status;
  std::string out;
};

Run run(const std::string& args) {
  std::string cmd = std::string(SNAPSHOT_INSPECT) + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

class SnapshotInspect : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = (fs::temp_directory_path() / "vmm-inspect-test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(t.data()), nullptr);
    dir_ = t;
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(SnapshotInspect, PrintsDirectoryAsJson) {
  Section tree = testing::sample_tree();
  tree.put_bytes("big", std::vector<uint8_t>(100, 0xab));
  ASSERT_TRUE(write_state_file((dir_ / "state").string(), testing::sample_header(), tree).ok());
  { std::ofstream(dir_ / "memory") << std::string(4096, '\0'); }
  auto r = run("--max-bytes 8 " + dir_.string());
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["file"], (dir_ / "state").string());
  EXPECT_EQ(j["header"]["cpu_template"], "host");
  EXPECT_EQ(j["header"]["config"]["vcpus"], "1");
  EXPECT_EQ(j["state"]["serial0"]["dll"], 12);
  EXPECT_EQ(j["state"]["big"]["size"], 100);
  EXPECT_EQ(j["state"]["big"]["hex"], "abababababababab");
  EXPECT_EQ(j["state"]["big"]["truncated"], true);
  EXPECT_EQ(j["memory_file"]["bytes"], 4096);

  auto f = run((dir_ / "state").string());
  ASSERT_EQ(f.status, 0) << f.out;
  auto jf = nlohmann::json::parse(f.out);
  EXPECT_FALSE(jf.contains("memory_file"));
  EXPECT_EQ(jf["state"]["big"]["hex"].get<std::string>().size(), 128u);  // default 64 bytes
}

TEST_F(SnapshotInspect, ErrorsAndUsage) {
  auto missing = run((dir_ / "nope").string());
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.out.find("No such file"), std::string::npos) << missing.out;
  { std::ofstream(dir_ / "state") << "VMMSTATE but not really"; }
  auto bad = run(dir_.string());
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.out.find("state: truncated: 23 bytes"), std::string::npos) << bad.out;
  EXPECT_EQ(run("").status, 2);
  EXPECT_EQ(run("--max-bytes x a").status, 2);
  EXPECT_EQ(run("--bogus a").status, 2);
  EXPECT_EQ(run("a b").status, 2);
}

}  // namespace
}  // namespace vmm::snapshot
