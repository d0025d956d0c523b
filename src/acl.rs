//! Client users and their ACL rules, as Redis 6+ has them: parsing a user's rules
//! (`"on ~app:* +@read -@dangerous"`) into a compiled [`User`], and checking a command against
//! it. Pure: no I/O but a user's `password_file`, read when a client authenticates.
//!
//! # What a compiled user is
//!
//! - commands: one bit per entry of the command table (subcommands included), set by
//!   `+cmd`, `+cmd|sub`, `+@category` (categories from the table's generated ACL facts,
//!   `command::acl_table`), cleared by `-...`; a container (`+config`) sets all of its
//!   subcommands, as in Redis;
//! - key patterns with read/write permission (`~p` both, `%R~p`, `%W~p`), matched with Redis's
//!   own glob ([`glob_match`], a port of `stringmatchlen`); a key passes when a pattern matches
//!   it and grants what the command's key spec does to it (`access` needs read; `insert`,
//!   `delete`, `update` need write), as Redis 7 checks it;
//! - channel patterns (`&p`) for `PUBLISH`, `SPUBLISH`, `(S)SUBSCRIBE` (glob) and `PSUBSCRIBE`
//!   (the pattern must equal one of the user's, as Redis compares them);
//! - password hashes (SHA-256, Redis's `#<hex>`), compared in constant time.
//!
//! A user whose rules allow every command, key and channel is `unrestricted`: the check is one
//! branch. Checks allocate nothing (the key positions go to the caller's scratch vector).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::command::{self, CommandSpec, KeySpec, Kind, PubSub};
use crate::protocol::Args;

pub use crate::command::ACL_CATEGORIES as CATEGORIES;

/// How many words the command bitset takes (the table has fewer than 64 * WORDS entries).
const WORDS: usize = 8;

/// One bit per command table entry.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Bits([u64; WORDS]);

impl Bits {
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: usize, on: bool) {
        if let Some(w) = self.0.get_mut(i / 64) {
            if on {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }
    fn all(&self) -> bool {
        (0..command::table_len()).all(|i| self.get(i))
    }
}

/// A key pattern and what it grants.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyPattern {
    pattern: Box<[u8]>,
    read: bool,
    write: bool,
}

/// A malformed rule: the rule and Redis's words for what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule '{rule}': {message}")]
pub struct RuleError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong (redis-server's `ACL SETUSER` message where it has one).
    pub message: &'static str,
}

const UNKNOWN: &str = "Unknown command or category name in ACL";
const SYNTAX: &str = "Syntax error";
const BAD_HASH: &str =
    "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters";
const AFTER_ALLKEYS: &str = "Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not have any effect. Try 'resetkeys' to start with an empty list of patterns";
const AFTER_ALLCHANNELS: &str = "Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and does not have any effect. Try 'resetchannels' to start with an empty list of channels";
const NO_SUCH_HASH: &str = "The password you are trying to remove from the user does not exist";
const CLEAR_PASSWORD: &str = "clear-text passwords (>pass, <pass) do not belong in a configuration file; give their SHA-256 as #<hex> in passwords or rules, or use password_file";
const FIRST_ARG: &str = "allowing a command's first argument (+command|arg) is not supported by keyway; only subcommands (+config|get) are";
const SELECTORS: &str = "selectors ((...), clearselectors) are not supported by keyway";

/// A user: its name, whether it is on, how it authenticates, and what it may do.
pub struct User {
    name: String,
    enabled: bool,
    nopass: bool,
    hashes: Vec<[u8; 32]>,
    /// A file of the password (or `#hash` lines), read at each authentication; the hashes of
    /// its last good read.
    password_file: Option<PathBuf>,
    file_hashes: Mutex<FileState>,
    commands: Bits,
    /// Commands the rules name one by one (`+flushall`, `-keys`): `refused_commands` leave them
    /// as the rules say.
    named: Bits,
    all_keys: bool,
    keys: Vec<KeyPattern>,
    all_channels: bool,
    channels: Vec<Box<[u8]>>,
    /// Every command, key and channel allowed: nothing to check.
    unrestricted: bool,
}

#[derive(Default)]
struct FileState {
    hashes: Vec<[u8; 32]>,
    failing: bool,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .field("nopass", &self.nopass)
            .field("passwords", &self.hashes.len())
            .finish_non_exhaustive()
    }
}

/// Why a command is denied, with the argument index of the key or channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The command (or subcommand) is not allowed.
    Command,
    /// The key at this argument index is not allowed.
    Key(usize),
    /// The channel at this argument index is not allowed.
    Channel(usize),
}

impl Denied {
    /// The `-NOPERM` text redis-server 7.0 answers (without the `NOPERM ` prefix).
    pub fn message(self, spec: &CommandSpec) -> String {
        match self {
            Denied::Command => format!(
                "this user has no permissions to run the '{}' command",
                spec.name
            ),
            Denied::Key(_) => {
                "this user has no permissions to access one of the keys used as arguments".into()
            }
            Denied::Channel(_) => {
                "this user has no permissions to access one of the channels used as arguments"
                    .into()
            }
        }
    }

    /// What `ACL DRYRUN` answers (redis-server 7.0's verbose form).
    pub fn dryrun_message(self, spec: &CommandSpec, args: Args<'_>) -> String {
        let arg = |i: usize| String::from_utf8_lossy(args.get(i).unwrap_or_default()).into_owned();
        match self {
            Denied::Command => format!(
                "This user has no permissions to run the '{}' command",
                spec.name
            ),
            Denied::Key(i) => format!(
                "This user has no permissions to access the '{}' key",
                arg(i)
            ),
            Denied::Channel(i) => format!(
                "This user has no permissions to access the '{}' channel",
                arg(i)
            ),
        }
    }
}

/// SHA-256 of a password.
pub fn hash(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

/// `#<64 lowercase hex digits>` (without the `#`) as a hash.
fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let s = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

impl User {
    /// A user as Redis's `ACL SETUSER name` starts one: off, no password, nothing allowed.
    fn empty(name: &str) -> User {
        User {
            name: name.to_owned(),
            enabled: false,
            nopass: false,
            hashes: Vec::new(),
            password_file: None,
            file_hashes: Mutex::new(FileState::default()),
            commands: Bits::default(),
            named: Bits::default(),
            all_keys: false,
            keys: Vec::new(),
            all_channels: false,
            channels: Vec::new(),
            unrestricted: false,
        }
    }

    /// Compiles a user from its rules (Redis ACL syntax, separated by whitespace), its
    /// password hashes (`#<hex>`) and its password file. `refused` lists commands refused to
    /// every user unless its rules name them (`+flushall`).
    ///
    /// # Errors
    ///
    /// [`RuleError`] for the first malformed rule or hash.
    pub fn compile(
        name: &str,
        rules: &str,
        passwords: &[String],
        password_file: Option<PathBuf>,
        refused: &[&'static CommandSpec],
    ) -> Result<User, RuleError> {
        let mut user = User::empty(name);
        for rule in rules.split_ascii_whitespace() {
            user.apply(rule).map_err(|message| RuleError {
                rule: rule.to_owned(),
                message,
            })?;
        }
        for p in passwords {
            user.apply(p).map_err(|message| RuleError {
                rule: p.clone(),
                message,
            })?;
            if !p.starts_with('#') {
                return Err(RuleError {
                    rule: "passwords".into(),
                    message: "each password must be #<SHA-256 in 64 lowercase hex digits>",
                });
            }
        }
        for spec in refused {
            let i = command::index_of(spec);
            if !user.named.get(i) {
                user.commands.set(i, false);
            }
        }
        if password_file.is_some() {
            user.nopass = false;
        }
        user.password_file = password_file;
        user.unrestricted = user.commands.all() && user.all_keys && user.all_channels;
        Ok(user)
    }

    /// Applies one rule.
    fn apply(&mut self, rule: &str) -> Result<(), &'static str> {
        let lower = rule.to_ascii_lowercase();
        match lower.as_str() {
            "on" => self.enabled = true,
            "off" => self.enabled = false,
            "nopass" => {
                self.nopass = true;
                self.hashes.clear();
            }
            "resetpass" => {
                self.nopass = false;
                self.hashes.clear();
            }
            "allkeys" => self.add_key("*", true, true)?,
            "resetkeys" => {
                self.all_keys = false;
                self.keys.clear();
            }
            "allchannels" => self.add_channel("*")?,
            "resetchannels" => {
                self.all_channels = false;
                self.channels.clear();
            }
            "allcommands" => self.category(None, true),
            "nocommands" => self.category(None, false),
            "reset" => {
                let name = std::mem::take(&mut self.name);
                *self = User::empty(&name);
            }
            "clearselectors" => return Err(SELECTORS),
            _ => return self.apply_prefixed(rule),
        }
        Ok(())
    }

    fn apply_prefixed(&mut self, rule: &str) -> Result<(), &'static str> {
        let Some(first) = rule.chars().next() else {
            return Err(SYNTAX);
        };
        let rest = rule.get(first.len_utf8()..).unwrap_or_default();
        match first {
            '>' | '<' => Err(CLEAR_PASSWORD),
            '#' => {
                let h = parse_hash(rest).ok_or(BAD_HASH)?;
                if !self.hashes.contains(&h) {
                    self.hashes.push(h);
                }
                self.nopass = false;
                Ok(())
            }
            '!' => {
                let h = parse_hash(rest).ok_or(BAD_HASH)?;
                let before = self.hashes.len();
                self.hashes.retain(|x| *x != h);
                if self.hashes.len() == before {
                    return Err(NO_SUCH_HASH);
                }
                Ok(())
            }
            '~' => self.add_key(rest, true, true),
            '%' => {
                let (perms, pattern) = rest.split_once('~').ok_or(SYNTAX)?;
                let (mut read, mut write) = (false, false);
                for c in perms.chars() {
                    match c.to_ascii_uppercase() {
                        'R' => read = true,
                        'W' => write = true,
                        _ => return Err(SYNTAX),
                    }
                }
                if !read && !write {
                    return Err(SYNTAX);
                }
                self.add_key(pattern, read, write)
            }
            '&' => self.add_channel(rest),
            '+' | '-' => {
                let on = first == '+';
                if let Some(cat) = rest.strip_prefix('@') {
                    let cat = cat.to_ascii_lowercase();
                    if cat == "all" {
                        self.category(None, on);
                    } else {
                        let bit = CATEGORIES.iter().position(|c| *c == cat).ok_or(UNKNOWN)?;
                        self.category(Some(bit), on);
                    }
                    return Ok(());
                }
                self.command(rest, on)
            }
            '(' => Err(SELECTORS),
            _ => Err(SYNTAX),
        }
    }

    fn add_key(&mut self, pattern: &str, read: bool, write: bool) -> Result<(), &'static str> {
        if self.all_keys {
            return Err(AFTER_ALLKEYS);
        }
        if pattern == "*" && read && write {
            self.all_keys = true;
            self.keys.clear();
            return Ok(());
        }
        let p = KeyPattern {
            pattern: pattern.as_bytes().into(),
            read,
            write,
        };
        if let Some(old) = self.keys.iter_mut().find(|k| k.pattern == p.pattern) {
            old.read |= read;
            old.write |= write;
        } else {
            self.keys.push(p);
        }
        Ok(())
    }

    fn add_channel(&mut self, pattern: &str) -> Result<(), &'static str> {
        if self.all_channels {
            return Err(AFTER_ALLCHANNELS);
        }
        if pattern == "*" {
            self.all_channels = true;
            self.channels.clear();
        } else if !self.channels.iter().any(|c| **c == *pattern.as_bytes()) {
            self.channels.push(pattern.as_bytes().into());
        }
        Ok(())
    }

    /// `+@cat` / `-@cat` (`None`: `@all`).
    fn category(&mut self, bit: Option<usize>, on: bool) {
        for i in 0..command::table_len() {
            let Some(spec) = command::spec_at(i) else {
                continue;
            };
            let hit = match bit {
                None => true,
                Some(b) => command::acl_categories(spec) & (1 << b) != 0,
            };
            if hit {
                self.commands.set(i, on);
            }
        }
    }

    /// `+cmd`, `-cmd`, `+cmd|sub`, `-cmd|sub`.
    fn command(&mut self, name: &str, on: bool) -> Result<(), &'static str> {
        let name = name.to_ascii_lowercase();
        if let Some((container, sub)) = name.split_once('|') {
            let parent = command::lookup(container).ok_or(UNKNOWN)?;
            if !parent.traits.contains(command::Traits::SUBCOMMANDS) || sub.contains('|') {
                return Err(FIRST_ARG);
            }
            let spec = command::lookup(&name).ok_or(UNKNOWN)?;
            let i = command::index_of(spec);
            self.commands.set(i, on);
            self.named.set(i, true);
            return Ok(());
        }
        let spec = command::lookup(&name).ok_or(UNKNOWN)?;
        let i = command::index_of(spec);
        self.commands.set(i, on);
        self.named.set(i, true);
        if spec.traits.contains(command::Traits::SUBCOMMANDS) {
            let prefix = format!("{}|", spec.name);
            for j in 0..command::table_len() {
                if command::spec_at(j).is_some_and(|s| s.name.starts_with(&prefix)) {
                    self.commands.set(j, on);
                    self.named.set(j, true);
                }
            }
        }
        Ok(())
    }

    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the user is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a new connection is this user without `AUTH` (Redis's `default` user when it is
    /// on and has `nopass`).
    pub fn open(&self) -> bool {
        self.enabled && self.nopass
    }

    /// Whether every command, key and channel is allowed.
    pub fn unrestricted(&self) -> bool {
        self.unrestricted
    }

    /// Whether `password` logs in as this user: the user is on, and has `nopass` or a password
    /// whose SHA-256 equals the password's (compared in constant time, over every hash).
    pub fn verify(&self, password: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        if self.nopass {
            return true;
        }
        let h = hash(password);
        let mut ok = subtle::Choice::from(0u8);
        for known in &self.hashes {
            ok |= known.ct_eq(&h);
        }
        if let Some(path) = &self.password_file {
            let mut state = self
                .file_hashes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match crate::credentials::read_secret_file(path) {
                Ok(text) => {
                    state.hashes = file_hashes(&text);
                    if std::mem::take(&mut state.failing) {
                        tracing::info!(user = %self.name, file = %path.display(), "a user's password_file can be read again");
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut state.failing, true) {
                        tracing::warn!(user = %self.name, file = %path.display(), error = %e, "a user's password_file cannot be read; the passwords last read from it stay in use");
                    }
                }
            }
            for known in &state.hashes {
                ok |= known.ct_eq(&h);
            }
        }
        bool::from(ok)
    }

    /// Checks a command (resolved by the command table) against the user's rules, as
    /// redis-server 7.0 does: the command bit (commands flagged `no_auth` always pass), then
    /// each key with the access its key spec needs, then the channels of
    /// `PUBLISH`/`SPUBLISH`/`(S|P)SUBSCRIBE`. `keys` is scratch space for key positions.
    ///
    /// # Errors
    ///
    /// [`Denied`] saying what is not allowed.
    #[inline]
    pub fn check(
        &self,
        spec: &'static CommandSpec,
        args: Args<'_>,
        keys: &mut Vec<usize>,
    ) -> Result<(), Denied> {
        if self.unrestricted {
            return Ok(());
        }
        self.check_slow(spec, args, keys)
    }

    fn check_slow(
        &self,
        spec: &'static CommandSpec,
        args: Args<'_>,
        keys: &mut Vec<usize>,
    ) -> Result<(), Denied> {
        if !spec.flags.contains(command::Flags::NO_AUTH)
            && !self.commands.get(command::index_of(spec))
        {
            return Err(Denied::Command);
        }
        if !self.all_keys && spec.keys != KeySpec::None {
            // Malformed key arguments (a bad numkeys) name no key: the command's own error
            // follows, as in Redis.
            if command::key_indexes(spec, args, keys).is_ok() {
                for (nth, &i) in keys.iter().enumerate() {
                    let key = args.get(i).unwrap_or_default();
                    let (read, write) = command::key_access(spec, args, nth);
                    let ok = self.keys.iter().any(|p| {
                        (p.read || !read) && (p.write || !write) && glob_match(&p.pattern, key)
                    });
                    if !ok {
                        return Err(Denied::Key(i));
                    }
                }
            }
        }
        if !self.all_channels {
            if let Kind::PubSub(what) = spec.kind {
                let (range, pattern) = match what {
                    PubSub::Publish => (1..2.min(args.len()), false),
                    PubSub::Subscribe | PubSub::SSubscribe => (1..args.len(), false),
                    PubSub::PSubscribe => (1..args.len(), true),
                    _ => (0..0, false),
                };
                for i in range {
                    let channel = args.get(i).unwrap_or_default();
                    let ok = self.channels.iter().any(|p| {
                        if pattern {
                            **p == *channel
                        } else {
                            glob_match(p, channel)
                        }
                    });
                    if !ok {
                        return Err(Denied::Channel(i));
                    }
                }
            }
        }
        Ok(())
    }

    /// The category names (`ACL CAT`'s) of a command, for `ACL CAT category`.
    pub fn commands_in(category: usize) -> impl Iterator<Item = &'static str> {
        (0..command::table_len())
            .filter_map(command::spec_at)
            .filter(move |s| command::acl_categories(s) & (1 << category) != 0)
            .map(|s| s.name)
    }
}

/// The hashes a password file gives: `#<hex>` lines when every non-empty line is one, else its
/// whole content, trailing line ends stripped, as one clear password.
fn file_hashes(text: &str) -> Vec<[u8; 32]> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let parsed: Vec<_> = lines
        .iter()
        .map(|l| l.strip_prefix('#').and_then(parse_hash))
        .collect();
    if !lines.is_empty() && parsed.iter().all(Option::is_some) {
        return parsed.into_iter().flatten().collect();
    }
    let clear = text.trim_end_matches(['\n', '\r']);
    if clear.is_empty() {
        Vec::new()
    } else {
        vec![hash(clear.as_bytes())]
    }
}

/// Every configured user, looked up by name.
#[derive(Debug, Default)]
pub struct Users {
    list: Vec<Arc<User>>,
}

impl Users {
    /// The users (an empty list: clients are not authenticated).
    pub fn new(list: Vec<User>) -> Users {
        Users {
            list: list.into_iter().map(Arc::new).collect(),
        }
    }

    /// Whether no user is configured.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The user named `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<User>> {
        self.list.iter().find(|u| u.name.as_bytes() == name)
    }

    /// The user a new connection is, without `AUTH`: `default` when it is on and has
    /// `nopass`; `None` (authentication required) otherwise, also when there is no `default`.
    pub fn initial(&self) -> Option<Arc<User>> {
        self.get(b"default").filter(|u| u.open()).cloned()
    }

    /// Whether a client must authenticate before anything else: users are configured and the
    /// `default` user is absent, off or has a password.
    pub fn auth_required(&self) -> bool {
        !self.is_empty() && self.initial().is_none()
    }

    /// The names of the users.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|u| u.name.as_str())
    }
}

/// The users in force, swapped whole by a config reload.
pub struct UsersHandle {
    current: ArcSwap<Users>,
}

impl Default for UsersHandle {
    fn default() -> Self {
        UsersHandle {
            current: ArcSwap::from_pointee(Users::default()),
        }
    }
}

impl std::fmt::Debug for UsersHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsersHandle").finish_non_exhaustive()
    }
}

impl UsersHandle {
    /// The users now.
    pub fn load(&self) -> arc_swap::Guard<Arc<Users>> {
        self.current.load()
    }

    /// The users now, as an `Arc` to keep.
    pub fn load_full(&self) -> Arc<Users> {
        self.current.load_full()
    }

    /// Puts new users in force; connections pick them at their next command.
    pub fn store(&self, users: Users) {
        self.current.store(Arc::new(users));
    }
}

/// Redis's glob matching (`stringmatchlen` with `nocase = 0`, as in redis-server 7.0): `*`,
/// `?`, `[abc]`, `[^abc]`, `[a-z]` (reversed ranges allowed), `\x` escapes.
pub fn glob_match(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer = false;
    glob_impl(pattern, string, &mut skip_longer, 0)
}

fn glob_impl(pattern: &[u8], string: &[u8], skip_longer: &mut bool, nesting: usize) -> bool {
    // Protection against abusive patterns, as Redis has it.
    if nesting > 1000 {
        return false;
    }
    // The pattern and string as C strings: a read past the end gives NUL.
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    let (mut p, mut s) = (0usize, 0usize);
    let (plen, slen) = (pattern.len(), string.len());
    while p < plen && s < slen {
        match at(pattern, p) {
            b'*' => {
                while p + 1 < plen && at(pattern, p + 1) == b'*' {
                    p += 1;
                }
                if p + 1 == plen {
                    return true;
                }
                while s < slen {
                    let rest_p = pattern.get(p + 1..).unwrap_or_default();
                    let rest_s = string.get(s..).unwrap_or_default();
                    if glob_impl(rest_p, rest_s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s += 1;
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s += 1,
            b'[' => {
                p += 1;
                let not = at(pattern, p) == b'^';
                if not {
                    p += 1;
                }
                let c = at(string, s);
                let mut matched = false;
                loop {
                    let left = plen.saturating_sub(p);
                    if at(pattern, p) == b'\\' && left >= 2 {
                        p += 1;
                        if at(pattern, p) == c {
                            matched = true;
                        }
                    } else if at(pattern, p) == b']' && left > 0 {
                        break;
                    } else if left == 0 {
                        p = p.saturating_sub(1);
                        break;
                    } else if left >= 3 && at(pattern, p + 1) == b'-' {
                        let (mut start, mut end) = (at(pattern, p), at(pattern, p + 2));
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        p += 2;
                        if c >= start && c <= end {
                            matched = true;
                        }
                    } else if at(pattern, p) == c {
                        matched = true;
                    }
                    p += 1;
                }
                if not {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s += 1;
            }
            b'\\' => {
                if plen - p >= 2 {
                    p += 1;
                }
                if at(pattern, p) != at(string, s) {
                    return false;
                }
                s += 1;
            }
            other => {
                if other != at(string, s) {
                    return false;
                }
                s += 1;
            }
        }
        p += 1;
        if s == slen {
            while at(pattern, p) == b'*' && p < plen {
                p += 1;
            }
            break;
        }
    }
    p >= plen && s == slen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_as_redis() {
        let yes = [
            ("*", "abc"),
            ("a*", "abc"),
            ("a?c", "abc"),
            ("[abc]x", "bx"),
            ("[^abc]x", "dx"),
            ("[a-c]", "b"),
            ("[c-a]", "b"),
            ("a\\*", "a*"),
            ("app:*", "app:1"),
            ("*:*", "a:b"),
            ("[\\]]", "]"),
            // An unclosed class is closed by the end of the pattern, as in stringmatchlen.
            ("[abc", "a"),
        ];
        for (p, s) in yes {
            assert!(glob_match(p.as_bytes(), s.as_bytes()), "{p} ~ {s}");
        }
        let no = [
            // As stringmatchlen: the loop never starts on an empty string.
            ("*", ""),
            ("a", ""),
            ("a*", "bac"),
            ("a?c", "ac"),
            ("[abc]x", "dx"),
            ("[^abc]x", "ax"),
            ("a\\*", "ab"),
            ("app:*", "other"),
        ];
        for (p, s) in no {
            assert!(!glob_match(p.as_bytes(), s.as_bytes()), "{p} !~ {s}");
        }
    }

    #[test]
    fn rules_compile_and_refuse() {
        let u = User::compile("u", "on ~app:* +@read -@dangerous", &[], None, &[]).unwrap();
        assert!(u.enabled() && !u.unrestricted());
        let all = User::compile("a", "on nopass ~* &* +@all", &[], None, &[]).unwrap();
        assert!(all.unrestricted() && all.open());
        for (rule, msg) in [
            ("+nosuch", UNKNOWN),
            ("+@nosuch", UNKNOWN),
            ("bogus", SYNTAX),
            ("#abc", BAD_HASH),
            (">secret", CLEAR_PASSWORD),
            ("+get|x", FIRST_ARG),
            ("-config|nosub", UNKNOWN),
        ] {
            let e = User::compile("u", rule, &[], None, &[]).unwrap_err();
            assert_eq!((e.rule.as_str(), e.message), (rule, msg));
        }
        let e = User::compile("u", "allkeys ~a", &[], None, &[]).unwrap_err();
        assert_eq!(e.message, AFTER_ALLKEYS);
    }

    /// Whether clients must authenticate, which also lifts protected mode (`server::serve`).
    #[test]
    fn auth_is_required_unless_default_is_on_and_nopass() {
        let user = |name: &str, rules: &str| User::compile(name, rules, &[], None, &[]).unwrap();
        assert!(!Users::default().auth_required());
        assert!(!Users::new(vec![user("default", "on nopass +@all")]).auth_required());
        assert!(Users::new(vec![user("default", "off nopass")]).auth_required());
        assert!(Users::new(vec![user("app", "on nopass")]).auth_required());
        let h = format!("#{}", "ab".repeat(32));
        let pw = User::compile("default", "on", &[h], None, &[]).unwrap();
        assert!(Users::new(vec![pw]).auth_required());
    }

    #[test]
    fn passwords_verify_by_hash() {
        let h = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"; // "password"
        let u = User::compile("u", "on", &[format!("#{h}")], None, &[]).unwrap();
        assert!(u.verify(b"password"));
        assert!(!u.verify(b"Password"));
        assert!(!u.verify(&vec![b'x'; 1 << 20]));
        let off = User::compile("u", "off", &[format!("#{h}")], None, &[]).unwrap();
        assert!(!off.verify(b"password"));
    }
}
