#include "vmm/snapshot/snapshot_dir.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "vmm/snapshot/state_file.h"

namespace vmm::snapshot {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "vmm-snapdir-test.XXXXXX").string();
    path = ::mkdtemp(t.data());
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST(SnapshotDir, MakesANewPrivateDirectory) {
  TempDir t;
  auto d = SnapshotDir::create((t.path / "snap").string());
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  struct stat st {};
  ASSERT_EQ(::stat((t.path / "snap").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  auto f = d->create_file("memory");
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  ASSERT_EQ(::fstat(f->get(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(d->create_file("memory").ok());  // never reopened or truncated
}

TEST(SnapshotDir, AcceptsAnEmptyDirectoryRefusesAFullOne) {
  TempDir t;
  fs::create_directory(t.path / "empty");
  EXPECT_TRUE(SnapshotDir::create((t.path / "empty").string()).ok());
  fs::create_directory(t.path / "full");
  std::ofstream(t.path / "full" / "old") << "x";
  auto r = SnapshotDir::create((t.path / "full").string());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("not empty"), std::string::npos) << r.error().message;
}

TEST(SnapshotDir, APlantedLinkIsNeverFollowed) {
  TempDir t;
  std::ofstream(t.path / "victim") << "precious";
  // A directory holding a symlink named like a snapshot file: refused (not empty).
  fs::create_directory(t.path / "planted");
  fs::create_symlink(t.path / "victim", t.path / "planted" / "memory");
  EXPECT_FALSE(SnapshotDir::create((t.path / "planted").string()).ok());
  // The directory itself a symlink: refused.
  fs::create_directory(t.path / "real");
  fs::create_directory_symlink(t.path / "real", t.path / "link");
  EXPECT_FALSE(SnapshotDir::create((t.path / "link").string()).ok());
  // A link planted after the emptiness check (the race): O_EXCL|O_NOFOLLOW refuses it.
  auto d = SnapshotDir::create((t.path / "racy").string());
  ASSERT_TRUE(d.ok());
  fs::create_symlink(t.path / "victim", t.path / "racy" / "memory");
  fs::create_symlink(t.path / "victim", t.path / "racy" / "state");
  EXPECT_FALSE(d->create_file("memory").ok());
  // The state file goes through a fresh temporary name and renameat, which
  // replaces the link itself.
  StateHeader h;
  h.vmm_version = "t";
  h.cpu_template = "host";
  Section tree;
  tree.put_u8("x", 1);
  ASSERT_TRUE(write_state_file_at(d->fd(), "state", h, tree, "state").ok());
  EXPECT_FALSE(fs::is_symlink(t.path / "racy" / "state"));
  EXPECT_EQ(slurp(t.path / "victim"), "precious");
}

TEST(SnapshotDir, RemoveCreatedLeavesNothingOfOurs) {
  TempDir t;
  auto d = SnapshotDir::create((t.path / "snap").string());
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(d->create_file("memory").ok());
  d->remove_created();
  EXPECT_FALSE(fs::exists(t.path / "snap"));
  // In a directory the user made, only our files go.
  fs::create_directory(t.path / "given");
  auto g = SnapshotDir::create((t.path / "given").string());
  ASSERT_TRUE(g.ok());
  ASSERT_TRUE(g->create_file("memory").ok());
  g->remove_created();
  EXPECT_TRUE(fs::exists(t.path / "given"));
  EXPECT_TRUE(fs::is_empty(t.path / "given"));
}

}  // namespace
}  // namespace vmm::snapshot
