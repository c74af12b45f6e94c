//! The accounts a Debian 12 (bookworm) minbase root already has, from base-passwd's
//! `/usr/share/base-passwd/{passwd,group}.master` plus what minbase's packages add (`_apt`).
//! Owners and groups must exist here, in `system_accounts`, or among the bundle's own users and
//! groups. If `base:` names another image, these lists are still the floor Kiln assumes.

/// Users of a bookworm minbase root.
pub const BASE_USERS: &[&str] = &[
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "_apt", "nobody",
];

/// Groups of a bookworm minbase root.
pub const BASE_GROUPS: &[&str] = &[
    "root", "daemon", "bin", "sys", "adm", "tty", "disk", "lp", "mail", "news", "uucp", "man",
    "proxy", "kmem", "dialout", "fax", "voice", "cdrom", "floppy", "tape", "sudo", "audio", "dip",
    "www-data", "backup", "operator", "list", "irc", "src", "shadow", "utmp", "video", "sasl",
    "plugdev", "staff", "games", "users", "nogroup",
];
