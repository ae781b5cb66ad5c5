//! `named_bytes!`: a struct of named hex values (the ones tests name) that also keeps every
//! value of its JSON object by name, in the object's key order, for the tests that go over
//! all of them.

macro_rules! named_bytes {
    ($(#[$meta:meta])* $name:ident {
        required: [$($(#[$rmeta:meta])* $req:ident),* $(,)?],
        optional: [$($(#[$ometa:meta])* $opt:ident),* $(,)?] $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name {
            $($(#[$rmeta])* pub $req: Vec<u8>,)*
            $($(#[$ometa])* pub $opt: Option<Vec<u8>>,)*
            all: std::collections::BTreeMap<String, Vec<u8>>,
        }

        impl $name {
            /// A value by its JSON name, if present.
            pub fn get(&self, name: &str) -> Option<&[u8]> {
                self.all.get(name).map(Vec::as_slice)
            }

            /// A value by its JSON name; panics naming it when absent.
            pub fn by_name(&self, name: &str) -> &[u8] {
                self.get(name).unwrap_or_else(|| {
                    panic!(concat!("no {} in ", stringify!($name)), name)
                })
            }

            /// Every value with its JSON name, in key order.
            pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
                self.all.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error as _;
                let all = crate::hex_serde::map(d)?;
                Ok(Self {
                    $($req: all
                        .get(stringify!($req))
                        .cloned()
                        .ok_or_else(|| D::Error::missing_field(stringify!($req)))?,)*
                    $($opt: all.get(stringify!($opt)).cloned(),)*
                    all,
                })
            }
        }
    };
}

pub(crate) use named_bytes;
