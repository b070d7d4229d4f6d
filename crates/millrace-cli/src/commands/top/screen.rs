//! `top` on a terminal: the alternate screen in raw mode, redrawn in place; keys quit or sort.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, queue, terminal};
use tokio::sync::mpsc;

use super::table::table;
use super::{sample, snapshot, Snapshot};
use crate::cli::{SortBy, TopArgs};
use crate::connect::Redis;
use crate::error::{CliError, Result};
use crate::render::{self};

/// The sort keys behind keys `1`-`9` on the screen, in column order.
const SORT_KEYS: [SortBy; 9] = [
    SortBy::Stream,
    SortBy::Length,
    SortBy::In,
    SortBy::Dlq,
    SortBy::Consumers,
    SortBy::Pending,
    SortBy::OldestIdle,
    SortBy::Lag,
    SortBy::Read,
];

/// The terminal in raw mode on the alternate screen, for as long as this lives (also after an
/// error or a panic, since the screen is restored on drop).
struct Screen {
    stop_keys: Arc<AtomicBool>,
}

impl Screen {
    fn enter() -> Result<(Screen, mpsc::Receiver<KeyEvent>)> {
        terminal::enable_raw_mode()?;
        let screen = Screen {
            stop_keys: Arc::new(AtomicBool::new(false)),
        };
        let mut out = std::io::stdout();
        queue!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
        out.flush()?;
        // Keys are read on a thread of their own: crossterm's reads block.
        let (tx, rx) = mpsc::channel(16);
        let stop = screen.stop_keys.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match crossterm::event::poll(Duration::from_millis(100)) {
                    Ok(false) => {}
                    Ok(true) => match crossterm::event::read() {
                        Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                            if tx.blocking_send(key).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    Err(_) => return,
                }
            }
        });
        Ok((screen, rx))
    }

    /// Redraws in place: every line is overwritten and cleared to its end, then the rest of the
    /// screen is cleared, so nothing is ever blanked first.
    fn draw(&self, text: &str) -> Result<()> {
        // A terminal that does not report its size (0 x 0) gets every line, uncut.
        let (width, height) = match terminal::size() {
            Ok((w, h)) if w > 0 && h > 0 => (w, h),
            _ => (u16::MAX, u16::MAX),
        };
        let mut out = std::io::stdout().lock();
        for (row, line) in text.lines().take(usize::from(height)).enumerate() {
            let line: String = line.chars().take(usize::from(width)).collect();
            queue!(
                out,
                cursor::MoveTo(0, u16::try_from(row).unwrap_or(u16::MAX)),
                crossterm::style::Print(line),
                terminal::Clear(terminal::ClearType::UntilNewLine)
            )?;
        }
        queue!(out, terminal::Clear(terminal::ClearType::FromCursorDown))?;
        out.flush()?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.stop_keys.store(true, Ordering::Relaxed);
        let mut out = std::io::stdout();
        let _ = queue!(out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = out.flush();
        let _ = terminal::disable_raw_mode();
    }
}

/// What a key asks for.
enum KeyAction {
    Quit,
    Interrupt,
    Sort(SortBy),
    Nothing,
}

fn key_action(key: &KeyEvent) -> KeyAction {
    match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => KeyAction::Interrupt,
        KeyCode::Char('q') | KeyCode::Esc => KeyAction::Quit,
        KeyCode::Char(c @ '1'..='9') => {
            let i = usize::from(c as u8 - b'1');
            KeyAction::Sort(SORT_KEYS[i])
        }
        _ => KeyAction::Nothing,
    }
}

pub(super) async fn run_on_screen(redis: &mut Redis, args: &TopArgs) -> Result<()> {
    let mut sort = args.sort;
    let mut prev = sample(redis, args).await?;
    // Ctrl-C arrives as a key in raw mode; a SIGINT from elsewhere must restore the screen too.
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let (screen, mut keys) = Screen::enter()?;
    let mut snap = snapshot(None, &prev, args);
    let mut next = Instant::now() + args.interval;
    loop {
        screen.draw(&screen_text(redis, args, sort, &snap))?;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {
                next = Instant::now() + args.interval;
                let cur = sample(redis, args).await?;
                snap = snapshot(Some(&prev), &cur, args);
                prev = cur;
            }
            _ = &mut ctrl_c => return Err(CliError::interrupted()),
            key = keys.recv() => match key.as_ref().map(key_action) {
                None | Some(KeyAction::Quit) => return Ok(()),
                Some(KeyAction::Interrupt) => return Err(CliError::interrupted()),
                Some(KeyAction::Sort(by)) => sort = by,
                Some(KeyAction::Nothing) => {}
            },
        }
    }
}

fn screen_text(redis: &Redis, args: &TopArgs, sort: SortBy, snap: &Snapshot) -> String {
    let mut text = format!(
        "millrace top  {}  every {}  (q quit, 1-9 sort)\n\n",
        redis.target,
        render::duration(args.interval),
    );
    if let Some(pattern) = &snap.pattern {
        text.push_str(&format!("{}\n\n", pattern.line()));
    }
    if snap.streams.is_empty() {
        text.push_str("no streams\n");
    } else {
        text.push_str(&table(snap, sort));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_quit_interrupt_and_sort() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(matches!(
            key_action(&key(KeyCode::Char('q'), KeyModifiers::NONE)),
            KeyAction::Quit
        ));
        assert!(matches!(
            key_action(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            KeyAction::Interrupt
        ));
        assert!(matches!(
            key_action(&key(KeyCode::Char('6'), KeyModifiers::NONE)),
            KeyAction::Sort(SortBy::Pending)
        ));
    }
}
