//! A test-only PKCS#11 module that makes a real module fail on command.
//!
//! It loads the real module (`LURK_P11_FAULT_MODULE`, default SoftHSM's
//! `/usr/lib/softhsm/libsofthsm2.so`) and exports `C_GetFunctionList` returning the real
//! module's function list, with the calls the CS makes wrapped: before forwarding, each
//! wrapped call reads the control file named by `LURK_P11_FAULT_FILE` (missing or empty:
//! forward everything). Each line of that file is one of:
//!
//! - `CKR_NAME C_Fn C_Fn2 …`: those calls return `CKR_NAME` without reaching the real module
//!   (`*` names every wrapped call but `C_Finalize`, so that the CS can always finalise
//!   and try again);
//! - `finalize TAG`: once per distinct TAG, the next wrapped call first runs the real
//!   module's C_Finalize: the real module forgets every session and login and answers
//!   CKR_CRYPTOKI_NOT_INITIALIZED by itself until someone calls C_Initialize again.
//!   Use it while the application is idle: C_Finalize is not safe concurrently with other
//!   calls (PKCS#11 v2.40 §5.4).
//! - `delay MS C_Fn C_Fn2 …`: those calls wait MS milliseconds, then go on as the other
//!   lines say (a slow token).
//!
//! Lines starting with `#` are comments. Every injected failure is reported on stderr.
//!
//! Why `unsafe`: a PKCS#11 module is a C ABI. Exporting `C_GetFunctionList`, handing out a
//! pointer to a C function table, and forwarding the caller's raw pointers to the real
//! module's functions all cross FFI; no safe wrapper exists for the module side of the
//! interface. The forwarding functions never dereference the caller's pointers: they pass
//! them on unchanged.
#![allow(non_snake_case)]

use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

use cryptoki_sys::*;

const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

struct Real {
    _lib: libloading::Library,
    list: CK_FUNCTION_LIST,
}

static REAL: OnceLock<Result<Real, String>> = OnceLock::new();
static OURS: OnceLock<CK_FUNCTION_LIST> = OnceLock::new();
/// The `finalize` tags already acted on.
static FINALIZED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn real() -> Result<&'static Real, CK_RV> {
    REAL.get_or_init(|| {
        let path = std::env::var("LURK_P11_FAULT_MODULE").unwrap_or_else(|_| DEFAULT_MODULE.into());
        // SAFETY: loading a PKCS#11 module runs its initialisers; that is what a PKCS#11
        // application does, and the module named is the one the test means to wrap.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| format!("{path}: {e}"))?;
        let list = {
            // SAFETY: C_GetFunctionList has this signature in every PKCS#11 v2.x module.
            let get: libloading::Symbol<
                '_,
                unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV,
            > = unsafe { lib.get(b"C_GetFunctionList\0") }.map_err(|e| format!("{path}: {e}"))?;
            let mut ptr: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
            // SAFETY: `ptr` is a valid out-pointer; the module sets it to its static list.
            let rv = unsafe { get(&mut ptr) };
            if rv != CKR_OK || ptr.is_null() {
                return Err(format!("{path}: C_GetFunctionList returned {rv:#x}"));
            }
            // SAFETY: the module's list is static and lives as long as the library, which
            // `Real` keeps loaded; it is copied, never written.
            unsafe { *ptr }
        };
        Ok(Real { _lib: lib, list })
    })
    .as_ref()
    .map_err(|e| {
        eprintln!("p11-fault-shim: cannot load the real module: {e}");
        CKR_GENERAL_ERROR
    })
}

/// The CKR_* names the control file may use.
const NAMES: &[(&str, CK_RV)] = &[
    ("CKR_GENERAL_ERROR", CKR_GENERAL_ERROR),
    ("CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED),
    ("CKR_DEVICE_ERROR", CKR_DEVICE_ERROR),
    ("CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY),
    ("CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED),
    ("CKR_SESSION_CLOSED", CKR_SESSION_CLOSED),
    ("CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID),
    ("CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT),
    ("CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN),
    ("CKR_PIN_INCORRECT", CKR_PIN_INCORRECT),
    ("CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED),
];

/// Reads the control file: runs a pending `finalize`, then returns the value `function`
/// must fail with, if any.
fn injected(function: &str) -> Option<CK_RV> {
    let path = std::env::var_os("LURK_P11_FAULT_FILE")?;
    let text = std::fs::read_to_string(path).ok()?;
    let mut fail = None;
    let mut delay = 0u64;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            None => {}
            Some(w) if w.starts_with('#') => {}
            Some("delay") => {
                let ms = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                if words.any(|w| w == function) {
                    delay = delay.max(ms);
                }
            }
            Some("finalize") => {
                let tag = words.next().unwrap_or_default().to_owned();
                let mut done = FINALIZED.lock().unwrap_or_else(|e| e.into_inner());
                if !done.contains(&tag) {
                    done.push(tag);
                    if let Some(f) = real().ok().and_then(|r| r.list.C_Finalize) {
                        // SAFETY: C_Finalize with a null reserved argument, as PKCS#11 requires.
                        let rv = unsafe { f(std::ptr::null_mut()) };
                        eprintln!("p11-fault-shim: finalized the real module (rv {rv:#x})");
                    }
                }
            }
            Some(name) => {
                let Some(&(_, rv)) = NAMES.iter().find(|(n, _)| *n == name) else {
                    eprintln!("p11-fault-shim: unknown return value {name:?} ignored");
                    continue;
                };
                let hit = words.any(|w| w == function || (w == "*" && function != "C_Finalize"));
                if hit && fail.is_none() {
                    fail = Some((name.to_owned(), rv));
                }
            }
        }
    }
    if delay > 0 {
        std::thread::sleep(std::time::Duration::from_millis(delay));
    }
    let (name, rv) = fail?;
    eprintln!("p11-fault-shim: {function} -> {name}");
    Some(rv)
}

/// Defines one wrapper per listed call, with the signature of `CK_FUNCTION_LIST`'s entry:
/// an injected failure, or the real module's function called with the same arguments.
macro_rules! wrap {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                if let Some(rv) = injected(stringify!($name)) {
                    return rv;
                }
                match real().map(|r| r.list.$name) {
                    // SAFETY: the caller's arguments, passed on unchanged to the real
                    // module's implementation of the same PKCS#11 function.
                    Ok(Some(f)) => unsafe { f($($arg),*) },
                    Ok(None) => CKR_FUNCTION_NOT_SUPPORTED,
                    Err(rv) => rv,
                }
            }
        )*

        fn override_wrapped(list: &mut CK_FUNCTION_LIST) {
            $(list.$name = Some($name);)*
        }
    };
}

wrap! {
    C_Initialize(a1: *mut c_void);
    C_Finalize(a1: *mut c_void);
    C_GetSlotList(a1: CK_BBOOL, a2: *mut CK_SLOT_ID, a3: *mut CK_ULONG);
    C_GetTokenInfo(a1: CK_SLOT_ID, a2: *mut CK_TOKEN_INFO);
    C_GetMechanismList(a1: CK_SLOT_ID, a2: *mut CK_MECHANISM_TYPE, a3: *mut CK_ULONG);
    C_GetMechanismInfo(a1: CK_SLOT_ID, a2: CK_MECHANISM_TYPE, a3: *mut CK_MECHANISM_INFO);
    C_OpenSession(a1: CK_SLOT_ID, a2: CK_FLAGS, a3: *mut c_void, a4: CK_NOTIFY, a5: *mut CK_SESSION_HANDLE);
    C_CloseSession(a1: CK_SESSION_HANDLE);
    C_GetSessionInfo(a1: CK_SESSION_HANDLE, a2: *mut CK_SESSION_INFO);
    C_Login(a1: CK_SESSION_HANDLE, a2: CK_USER_TYPE, a3: *mut CK_UTF8CHAR, a4: CK_ULONG);
    C_Logout(a1: CK_SESSION_HANDLE);
    C_CreateObject(a1: CK_SESSION_HANDLE, a2: *mut CK_ATTRIBUTE, a3: CK_ULONG, a4: *mut CK_OBJECT_HANDLE);
    C_DestroyObject(a1: CK_SESSION_HANDLE, a2: CK_OBJECT_HANDLE);
    C_GetAttributeValue(a1: CK_SESSION_HANDLE, a2: CK_OBJECT_HANDLE, a3: *mut CK_ATTRIBUTE, a4: CK_ULONG);
    C_FindObjectsInit(a1: CK_SESSION_HANDLE, a2: *mut CK_ATTRIBUTE, a3: CK_ULONG);
    C_FindObjects(a1: CK_SESSION_HANDLE, a2: *mut CK_OBJECT_HANDLE, a3: CK_ULONG, a4: *mut CK_ULONG);
    C_FindObjectsFinal(a1: CK_SESSION_HANDLE);
    C_EncryptInit(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE);
    C_Encrypt(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_DecryptInit(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE);
    C_Decrypt(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_SignInit(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE);
    C_Sign(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_GenerateKey(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: *mut CK_ATTRIBUTE, a4: CK_ULONG, a5: *mut CK_OBJECT_HANDLE);
    C_GenerateKeyPair(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: *mut CK_ATTRIBUTE, a4: CK_ULONG, a5: *mut CK_ATTRIBUTE, a6: CK_ULONG, a7: *mut CK_OBJECT_HANDLE, a8: *mut CK_OBJECT_HANDLE);
    C_DeriveKey(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE, a4: *mut CK_ATTRIBUTE, a5: CK_ULONG, a6: *mut CK_OBJECT_HANDLE);
    C_GenerateRandom(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG);
}

/// The PKCS#11 v2.40 entry point: the real module's function list with the calls above
/// wrapped (the others go straight to the real module).
///
/// # Safety
///
/// `list` must be null or valid for writing one pointer (PKCS#11 v2.40 §5.2).
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let real = match real() {
        Ok(r) => r,
        Err(rv) => return rv,
    };
    let ours = OURS.get_or_init(|| {
        let mut l = real.list;
        override_wrapped(&mut l);
        l.C_GetFunctionList = Some(C_GetFunctionList);
        l
    });
    // SAFETY: `list` is valid for writing (checked non-null; the caller's contract). The
    // table is static and never written through this pointer (PKCS#11 applications read it).
    unsafe { *list = ours as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
    CKR_OK
}
