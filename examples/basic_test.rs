//! The user's own example from the seed, unchanged but for `#[derive(Serialize, Deserialize)]`
//! and the lines marked "added for CI", which check what it prints.
use rskv::core::status::Status;
use rskv::device::file_system_disk::FileSystemDisk;
use rskv::rskv_core::{ReadContext, RsKv, UpsertContext};
use serde::{Deserialize, Serialize};

// Define the data structure
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserData {
    id: u64,
    name: String,
    email: String,
}

impl Default for UserData {
    fn default() -> Self {
        UserData {
            id: 0,
            name: String::new(),
            email: String::new(),
        }
    }
}

// Implement UpsertContext
struct UserUpsertContext {
    key: u64,
    value: UserData,
}

impl UpsertContext for UserUpsertContext {
    type Key = u64;
    type Value = UserData;

    fn key(&self) -> &Self::Key {
        &self.key
    }
    fn value(&self) -> &Self::Value {
        &self.value
    }
    fn key_hash(&self) -> u64 {
        self.key
    }
    fn put_atomic(&self, _value: &mut Self::Value) -> bool {
        false
    }
}

// Implement ReadContext
struct UserReadContext {
    key: u64,
    value: Option<UserData>,
}

impl ReadContext for UserReadContext {
    type Key = u64;
    type Value = UserData;

    fn key(&self) -> &Self::Key {
        &self.key
    }
    fn key_hash(&self) -> u64 {
        self.key
    }
    fn get(&mut self, value: &Self::Value) {
        self.value = Some(value.clone());
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Create the KV store
    let disk = FileSystemDisk::new("/tmp/rskv_test")?;
    let kv = RsKv::<u64, UserData, FileSystemDisk>::new(1 << 20, 1 << 16, disk)?;

    // Upsert
    let upsert_ctx = UserUpsertContext {
        key: 1,
        value: UserData {
            id: 1,
            name: "Alice".to_string(),
            email: "alice@example.com".to_string(),
        },
    };
    let status = kv.upsert(&upsert_ctx);
    println!("Upsert status: {:?}", status);
    // Added for CI: the upsert succeeded.
    assert_eq!(status, Status::Ok, "upsert status");

    // Read
    let mut read_ctx = UserReadContext {
        key: 1,
        value: None,
    };
    let status = kv.read(&mut read_ctx);
    // Added for CI: a copy for the check below (the `if let` moves the value out).
    let read_value = read_ctx.value.clone();
    if status == Status::Ok {
        if let Some(user) = read_ctx.value {
            println!("Read user: {:?}", user);
        }
    }
    // Added for CI: the read found exactly the record written, so a wrong result fails the run
    // instead of only being printed.
    assert_eq!(status, Status::Ok, "read status");
    assert_eq!(read_value, Some(upsert_ctx.value), "read value");
    Ok(())
}
