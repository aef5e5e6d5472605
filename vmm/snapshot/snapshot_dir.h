// SnapshotDir: the directory a snapshot is written into, opened so that
// nothing planted in or under it can redirect a write (docs/security.md).
//
// create(path) makes the directory (mode 0700) or accepts an existing EMPTY
// directory; the last component must not be a symlink (O_NOFOLLOW). Files are
// then created relative to the directory's fd with O_CREAT|O_EXCL|O_NOFOLLOW
// (create_file), so a name that appears meanwhile (a symlink, a hard link, a
// file) makes the snapshot fail instead of being written through. On
// failure, remove_created() deletes what this object created (the files,
// and the directory if it made it).
#pragma once

#include <string>
#include <vector>

#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace vmm::snapshot {

class SnapshotDir {
 public:
  static Result<SnapshotDir> create(const std::string& path);

  // A new regular file `name` (mode 0600) in the directory, opened for writing.
  Result<UniqueFd> create_file(const std::string& name);
  // Records a file made in the directory by other means (renameat), so that
  // remove_created() removes it too.
  void note_created(const std::string& name) { files_.push_back(name); }
  void remove_created();

  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }

 private:
  SnapshotDir(std::string path, UniqueFd fd, bool made_dir)
      : path_(std::move(path)), fd_(std::move(fd)), made_dir_(made_dir) {}

  std::string path_;
  UniqueFd fd_;
  bool made_dir_;
  std::vector<std::string> files_;
};

}  // namespace vmm::snapshot
