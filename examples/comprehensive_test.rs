//! Every operation, several threads, a data set larger than the log memory, each result checked.
//! Exits non-zero on the first mismatch.
use std::process::ExitCode;
use std::sync::Arc;

use rskv::device::file_system_disk::FileSystemDisk;
use rskv::{Config, DeleteContext, ReadContext, RmwContext, RsKv, Status, UpsertContext};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: i64,
    history: Vec<i64>,
}

fn account(k: u64) -> Account {
    Account {
        owner: format!("owner-{k}"),
        balance: k as i64 * 10,
        history: vec![k as i64],
    }
}

struct Put(u64, Account);
impl UpsertContext for Put {
    type Key = u64;
    type Value = Account;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn value(&self) -> &Account {
        &self.1
    }
}

struct Get(u64, Option<Account>);
impl ReadContext for Get {
    type Key = u64;
    type Value = Account;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn get(&mut self, v: &Account) {
        self.1 = Some(v.clone());
    }
}

struct Deposit(u64, i64);
impl RmwContext for Deposit {
    type Key = u64;
    type Value = Account;
    fn key(&self) -> &u64 {
        &self.0
    }
    fn rmw_initial(&self) -> Account {
        Account {
            owner: format!("owner-{}", self.0),
            balance: self.1,
            history: vec![self.1],
        }
    }
    fn rmw_copy(&self, old: &Account) -> Account {
        let mut a = old.clone();
        a.balance += self.1;
        a.history.push(self.1);
        a
    }
}

struct Close(u64);
impl DeleteContext for Close {
    type Key = u64;
    type Value = Account;
    fn key(&self) -> &u64 {
        &self.0
    }
}

fn check(what: &str, ok: bool, failures: &mut u64) {
    if !ok {
        *failures += 1;
        eprintln!("MISMATCH: {what}");
    }
}

fn main() -> ExitCode {
    let dir = tempfile::tempdir().expect("temporary directory");
    let disk = FileSystemDisk::new(dir.path()).expect("disk");
    println!("device: {}", disk_description(&disk));
    // 256 KiB of log memory for ~40k accounts of ~40 bytes: most records live on disk.
    let config = Config::new().table_size(1 << 12).log_memory_size(256 << 10);
    let kv = Arc::new(RsKv::<u64, Account, _>::open(config, disk).expect("open"));
    let threads = 4u64;
    let per_thread = 10_000u64;

    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                let mut failures = 0;
                let keys = (t * per_thread)..((t + 1) * per_thread);
                for k in keys.clone() {
                    check(
                        &format!("upsert {k}"),
                        kv.upsert(&Put(k, account(k))) == Status::Ok,
                        &mut failures,
                    );
                }
                for k in keys.clone().step_by(2) {
                    check(
                        &format!("deposit {k}"),
                        kv.rmw_context(&Deposit(k, 5)) == Status::Ok,
                        &mut failures,
                    );
                }
                for k in keys.clone().step_by(5) {
                    check(
                        &format!("close {k}"),
                        kv.delete(&Close(k)) == Status::Ok,
                        &mut failures,
                    );
                }
                for k in keys {
                    let mut get = Get(k, None);
                    let status = kv.read(&mut get);
                    let mut want = account(k);
                    if k % 2 == 0 {
                        want.balance += 5;
                        want.history.push(5);
                    }
                    if k % 5 == 0 {
                        check(
                            &format!("read closed {k}: {status:?}"),
                            status == Status::NotFound,
                            &mut failures,
                        );
                    } else {
                        check(
                            &format!("read {k}: {status:?} {:?}", get.1),
                            status == Status::Ok && get.1 == Some(want),
                            &mut failures,
                        );
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures: u64 = workers
        .into_iter()
        .map(|w| w.join().expect("worker panicked"))
        .sum();

    // Facade and shared counters: all threads deposit into the same 16 accounts.
    let shared: Vec<_> = (0..threads)
        .map(|_| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for round in 0..192u64 {
                    kv.rmw(&(1_000_000 + round % 16), |old| {
                        let mut a = old.unwrap_or(Account {
                            owner: "shared".into(),
                            balance: 0,
                            history: vec![],
                        });
                        a.balance += 1;
                        a
                    })
                    .expect("rmw");
                }
            })
        })
        .collect();
    for s in shared {
        s.join().expect("shared worker panicked");
    }
    for k in 0..16 {
        let got = kv.get(&(1_000_000 + k)).expect("get").map(|a| a.balance);
        check(
            &format!("shared {k}: {got:?}"),
            got == Some((threads * 192 / 16) as i64),
            &mut failures,
        );
    }
    let stats = kv.stats();
    println!(
        "{} keys, log memory {} KiB, {} KiB written to disk, {} KiB read back, head at {}",
        threads * per_thread + 16,
        stats.log_memory >> 10,
        stats.bytes_written >> 10,
        stats.bytes_read >> 10,
        stats.markers.head
    );
    check(
        "data must have reached the disk",
        stats.bytes_written > stats.log_memory as u64,
        &mut failures,
    );
    if failures == 0 {
        println!("comprehensive_test: all checks passed");
        ExitCode::SUCCESS
    } else {
        eprintln!("comprehensive_test: {failures} mismatches");
        ExitCode::FAILURE
    }
}

fn disk_description(disk: &FileSystemDisk) -> String {
    use rskv::device::Disk;
    disk.describe()
}
