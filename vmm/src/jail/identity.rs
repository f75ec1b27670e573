//! Who the jailed VMM runs as: `USER[:GROUP]`, each a name or a number.

use super::JailError;

/// The user a jail runs as when none is configured; its primary group goes with it.
pub const DEFAULT_USER: &str = "nobody";

/// An unprivileged uid/gid pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailUser {
    pub uid: u32,
    pub gid: u32,
}

/// Parses `USER[:GROUP]`. A user name brings its primary group unless GROUP is given; a
/// numeric user without GROUP gets the group with the same number. Root is refused.
pub fn parse_user(spec: &str) -> Result<JailUser, JailError> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup_user(user).ok_or_else(|| JailError::UnknownUser(user.to_string()))?,
    };
    let gid = match group {
        None => primary_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                lookup_group(group).ok_or_else(|| JailError::UnknownGroup(group.to_string()))?
            }
        },
    };
    if uid == 0 || gid == 0 {
        return Err(JailError::RootUser);
    }
    Ok(JailUser { uid, gid })
}

/// The local account databases. Read directly, not through glibc's NSS: `veil` ships
/// statically linked (veil/build-dist.sh), and a static glibc cannot load NSS modules (a
/// lookup of an unknown name crashed it). A jail's user is a local system account.
const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// (uid, primary gid) of a user name.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(PASSWD).ok()?;
    let fields = find_entry(&text, name)?;
    // name:password:uid:gid:...
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// The gid of a group name.
fn lookup_group(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(GROUP).ok()?;
    // name:password:gid:members
    find_entry(&text, name)?.get(2)?.parse().ok()
}

/// The colon-separated fields of the line of `text` whose first field is `name`.
fn find_entry<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_found_by_their_first_field_only() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(find_entry(passwd, "nobody").unwrap()[2], "65534");
        assert!(find_entry(passwd, "nobod").is_none());
        assert!(find_entry(passwd, "65534").is_none());
        assert!(find_entry("", "root").is_none());
    }

    #[test]
    fn numbers_names_and_root() {
        assert_eq!(
            parse_user("1234").unwrap(),
            JailUser {
                uid: 1234,
                gid: 1234
            }
        );
        assert_eq!(
            parse_user("1234:99").unwrap(),
            JailUser { uid: 1234, gid: 99 }
        );
        assert!(matches!(parse_user("0"), Err(JailError::RootUser)));
        assert!(matches!(parse_user("5:0"), Err(JailError::RootUser)));
        assert!(matches!(parse_user("root"), Err(JailError::RootUser)));
        let err = parse_user("no-such-user-veil").unwrap_err();
        assert!(err.to_string().contains("no-such-user-veil"), "{err}");
        let err = parse_user("1234:no-such-group-veil").unwrap_err();
        assert!(err.to_string().contains("no-such-group-veil"), "{err}");
    }
}
