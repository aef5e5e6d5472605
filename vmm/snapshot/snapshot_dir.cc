#include "vmm/snapshot/snapshot_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace vmm::snapshot {

namespace {

// The first entry of the directory other than . and .., or "".
Result<std::string> first_entry(int dirfd) {
  int dup = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return errno_error("dup");
  DIR* d = ::fdopendir(dup);
  if (!d) {
    ::close(dup);
    return errno_error("fdopendir");
  }
  std::string found;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      found = e->d_name;
      break;
    }
  }
  ::closedir(d);
  return found;
}

}  // namespace

Result<SnapshotDir> SnapshotDir::create(const std::string& path) {
  if (path.empty()) return make_error("snapshot: no directory given");
  bool made = ::mkdir(path.c_str(), 0700) == 0;
  if (!made && errno != EEXIST) return errno_error("snapshot: cannot create directory '{}'", path);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ELOOP || errno == ENOTDIR)
      return make_error("snapshot: '{}' is not a directory (a symlink or a file is refused)", path);
    return errno_error("snapshot: cannot open directory '{}'", path);
  }
  if (!made) {
    VMM_TRY(auto entry, first_entry(fd.get()));
    if (!entry.empty())
      return make_error("snapshot: directory '{}' is not empty (it holds '{}'); give a new or "
                        "empty directory",
                        path, entry);
  }
  return SnapshotDir(path, std::move(fd), made);
}

Result<UniqueFd> SnapshotDir::create_file(const std::string& name) {
  UniqueFd f(::openat(fd_.get(), name.c_str(),
                      O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!f.valid()) return errno_error("snapshot: cannot create '{}/{}'", path_, name);
  files_.push_back(name);
  return f;
}

void SnapshotDir::remove_created() {
  for (const auto& name : files_) (void)::unlinkat(fd_.get(), name.c_str(), 0);
  files_.clear();
  if (made_dir_) (void)::rmdir(path_.c_str());
  made_dir_ = false;
}

}  // namespace vmm::snapshot
