//! Who the jailed VMM runs as: `USER[:GROUP]`, each a name or a number.

use std::ffi::CString;

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

/// Size of the buffer for the strings of a passwd or group entry.
const ENTRY_BUFFER: usize = 16 * 1024;

/// (uid, primary gid) of a user name.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).ok()?;
    // SAFETY: passwd is plain data; getpwnam_r fills it with pointers into `buf`, which we
    // do not read.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; ENTRY_BUFFER];
    let mut found = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is its size.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some((entry.pw_uid, entry.pw_gid))
}

/// The gid of a group name.
fn lookup_group(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: as in `lookup_user`.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; ENTRY_BUFFER];
    let mut found = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is its size.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(entry.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

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
