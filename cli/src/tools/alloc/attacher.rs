//! Opening and closing the allocator probe's windows, off the sampler's
//! thread: opening a uprobe takes milliseconds, and each close waits out an
//! RCU grace period (~0.1 s here), so each close runs in a thread of its own
//! and the next window opens on time.

use std::{
    os::fd::RawFd,
    sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender},
    thread::JoinHandle,
    time::Duration,
};

use crate::bpf::perf_link::{Link, Site};

enum Order {
    /// Open a window on each (target index, site).
    Open(Vec<(usize, Site)>),
    Close(Vec<Link>),
}

/// The programs a window attaches at each site: the entry uprobe, and for
/// `ljprobe leak` the uretprobe that sees the address returned.
#[derive(Clone, Copy)]
pub struct Progs {
    pub entry: RawFd,
    pub exit: Option<RawFd>,
}

fn serve(pmu: u32, progs: Progs, orders: &Receiver<Order>, opened: &Sender<Vec<(usize, Link)>>) {
    let mut closing: Vec<JoinHandle<()>> = Vec::new();
    while let Ok(order) = orders.recv() {
        closing.retain(|c| !c.is_finished());
        match order {
            Order::Open(sites) => {
                let mut links = Vec::new();
                for (i, site) in sites {
                    // The return first: an entry seen without its return leaves a stale pending entry.
                    if let Some(exit) = progs.exit {
                        match Link::uretprobe(pmu, &site, exit) {
                            Ok(l) => links.push((i, l)),
                            Err(e) => {
                                log::debug!("{e:#}");
                                continue;
                            }
                        }
                    }
                    match Link::uprobe(pmu, &site, progs.entry) {
                        Ok(l) => links.push((i, l)),
                        Err(e) => log::debug!("{e:#}"),
                    }
                }
                if opened.send(links).is_err() {
                    break;
                }
            }
            Order::Close(links) => closing.push(std::thread::spawn(move || drop(links))),
        }
    }
    for c in closing {
        let _ = c.join();
    }
}

/// The sampler's handle on the attaching thread.
pub struct Attacher {
    orders: Sender<Order>,
    opened: Receiver<Vec<(usize, Link)>>,
    thread: JoinHandle<()>,
}

impl Attacher {
    pub fn start(pmu: u32, progs: Progs) -> std::io::Result<Attacher> {
        let (orders, rx) = channel::<Order>();
        let (tx, opened) = channel::<Vec<(usize, Link)>>();
        let thread = std::thread::Builder::new().name("alloc-attach".into()).spawn(move || serve(pmu, progs, &rx, &tx))?;
        Ok(Attacher { orders, opened, thread })
    }

    /// Opens a window on each (target index, site); `opened` hands them over.
    pub fn open(&self, sites: Vec<(usize, Site)>) {
        let _ = self.orders.send(Order::Open(sites));
    }

    /// The windows asked for, once open (None if not yet, after `wait`).
    pub fn opened(&self, wait: Duration) -> Result<Vec<(usize, Link)>, RecvTimeoutError> {
        self.opened.recv_timeout(wait)
    }

    pub fn close(&self, links: Vec<Link>) {
        let _ = self.orders.send(Order::Close(links));
    }

    /// Waits until every window is closed.
    pub fn finish(self) {
        drop(self.orders);
        let _ = self.thread.join();
    }
}
