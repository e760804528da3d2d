"""One sandbox as an OCI container: its bundle config (config.py), the runtime binary per class
(cli.py), its cgroups, its root filesystem and mounts, its disk-limited scratch volume, the user
namespace it runs in, and the agent binary mounted into it."""
