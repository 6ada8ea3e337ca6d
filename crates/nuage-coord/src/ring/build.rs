//! Building the ring's links, by either bootstrap method.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpStream};

use super::{LINK_TIMEOUT, Link, Links, Task};
use crate::frame::{FrameReader, write_frame};
use crate::launch::proto::Bootstrap;

pub async fn build(task: &Task, listener: &TcpListener) -> anyhow::Result<Links> {
    match task.bootstrap {
        Bootstrap::Chain => chain(task, listener).await,
        Bootstrap::First => first(task, listener).await,
    }
}

async fn connect(addr: SocketAddr, what: &str) -> anyhow::Result<TcpStream> {
    let s = tokio::time::timeout(LINK_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("{what} at {addr} does not answer"))?
        .with_context(|| format!("cannot connect to {what} at {addr}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn accept(
    listener: &TcpListener,
    what: &str,
) -> anyhow::Result<(
    FrameReader<tokio::net::tcp::OwnedReadHalf, Link>,
    tokio::net::tcp::OwnedWriteHalf,
    Link,
)> {
    let (s, _) = tokio::time::timeout(LINK_TIMEOUT, listener.accept())
        .await
        .with_context(|| format!("{what} did not connect within {}s", LINK_TIMEOUT.as_secs()))??;
    let _ = s.set_nodelay(true);
    let (r, w) = s.into_split();
    let mut reader = FrameReader::new(r);
    let first = read(&mut reader, what).await?;
    Ok((reader, w, first))
}

async fn read(
    reader: &mut FrameReader<tokio::net::tcp::OwnedReadHalf, Link>,
    what: &str,
) -> anyhow::Result<Link> {
    match tokio::time::timeout(LINK_TIMEOUT, reader.read()).await {
        Err(_) => bail!("{what} said nothing within {}s", LINK_TIMEOUT.as_secs()),
        Ok(r) => r?.with_context(|| format!("{what} closed its connection")),
    }
}

/// Links to the successor at `addr`, introducing this process.
async fn link_to(task: &Task, addr: SocketAddr) -> anyhow::Result<tokio::net::tcp::OwnedWriteHalf> {
    let (_, mut w) = connect(addr, "the successor").await?.into_split();
    write_frame(&mut w, &Link::Hello { index: task.index }).await?;
    Ok(w)
}

async fn accept_pred(
    listener: &TcpListener,
) -> anyhow::Result<FrameReader<tokio::net::tcp::OwnedReadHalf, Link>> {
    let (reader, _w, first) = accept(listener, "the predecessor").await?;
    match first {
        Link::Hello { .. } => Ok(reader),
        other => bail!("the predecessor began with {other:?} instead of hello"),
    }
}

/// Chain: process i > 0 links to process i − 1 (its contact); the last one's address
/// travels back from process to process to process 0, which links to it.
async fn chain(task: &Task, listener: &TcpListener) -> anyhow::Result<Links> {
    let last = task.index + 1 == task.n;
    let mut succ = None;
    if task.index > 0 {
        let contact = task
            .contact
            .context("chain: no predecessor address given")?;
        let mut w = link_to(task, contact).await?;
        if last {
            write_frame(&mut w, &Link::Closing { addr: task.own }).await?;
        }
        succ = Some(w);
    }
    let mut pred = accept_pred(listener).await?;
    if !last {
        // Every process but the last sees the closing address go by.
        let addr = match read(&mut pred, "the predecessor").await? {
            Link::Closing { addr } => addr,
            other => bail!("expected the closing address, got {other:?}"),
        };
        if task.index == 0 {
            succ = Some(link_to(task, addr).await?);
        } else {
            let w = succ.as_mut().expect("index > 0");
            write_frame(w, &Link::Closing { addr }).await?;
        }
    }
    Ok(Links {
        succ: succ.expect("set above"),
        pred,
    })
}

/// First: every process joins at process 0, which waits for all, orders them by arrival
/// and tells each its successor (the last one's is process 0).
async fn first(task: &Task, listener: &TcpListener) -> anyhow::Result<Links> {
    if task.index == 0 {
        let mut joined = Vec::new();
        while joined.len() + 1 < task.n as usize {
            let (_r, w, first) = accept(listener, "a joining process").await?;
            match first {
                Link::Join { index, addr } => joined.push((index, addr, w)),
                other => bail!("a joining process began with {other:?}"),
            }
        }
        let addrs: Vec<SocketAddr> = joined.iter().map(|j| j.1).collect();
        for (k, (_, _, w)) in joined.iter_mut().enumerate() {
            let next = addrs.get(k + 1).copied().unwrap_or(task.own);
            write_frame(w, &Link::Next { addr: next }).await?;
        }
        let succ = link_to(task, addrs[0]).await?;
        let pred = accept_pred(listener).await?;
        Ok(Links { succ, pred })
    } else {
        let contact = task
            .contact
            .context("first: no address of the first process")?;
        let (r, mut w) = connect(contact, "the first process").await?.into_split();
        write_frame(
            &mut w,
            &Link::Join {
                index: task.index,
                addr: task.own,
            },
        )
        .await?;
        let mut reader = FrameReader::new(r);
        // The first answers once everyone has joined.
        let next = match read(&mut reader, "the first process").await? {
            Link::Next { addr } => addr,
            other => bail!("the first process answered {other:?}"),
        };
        let succ = link_to(task, next).await?;
        let pred = accept_pred(listener).await?;
        Ok(Links { succ, pred })
    }
}
