//! 16550A UART on an IOAPIC pin, built on vm-superio's serial model.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::warn;
use vm_device::bus::PioAddress;
use vm_device::DevicePio;
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::ioapic::Ioapic;

/// I/O base of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// IOAPIC pin of COM1.
pub const COM1_PIN: usize = 4;

/// Raises an edge on an IOAPIC pin (the UART's interrupt line).
pub struct IoapicPin {
    ioapic: Arc<Ioapic>,
    pin: usize,
}

impl IoapicPin {
    /// A trigger for `pin` of `ioapic`.
    pub fn new(ioapic: Arc<Ioapic>, pin: usize) -> Self {
        Self { ioapic, pin }
    }
}

impl Trigger for IoapicPin {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.ioapic.pulse(self.pin);
        Ok(())
    }
}

/// Signals an eventfd when the guest has drained the receive FIFO, so the input side can
/// push more bytes.
pub struct InputReady(pub EventFd);

impl SerialEvents for InputReady {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            warn!("serial: cannot signal input readiness: {e}");
        }
    }
}

type Uart = Serial<IoapicPin, InputReady, Box<dyn Write + Send>>;

/// A serial port device for the PIO bus.
pub struct SerialPort {
    uart: Mutex<Uart>,
}

impl SerialPort {
    /// Creates the port; guest output goes to `out`, `input_ready` is signalled when the
    /// receive FIFO empties.
    pub fn new(irq: IoapicPin, input_ready: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Mutex::new(Serial::with_events(irq, InputReady(input_ready), out)),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        if uart.fifo_capacity() == 0 {
            return 0;
        }
        uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Flushes buffered guest output.
    pub fn flush(&self) {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        let _ = uart.writer_mut().flush();
    }
}

impl DevicePio for SerialPort {
    fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        if data.len() == 1 && offset < 8 {
            data[0] = self
                .uart
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(offset as u8);
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = uart.write(offset as u8, data[0]) {
                warn!("serial: {e:?}");
            }
            // Guest output is interactive: flush at line ends so the console stays live.
            if offset == 0 && data[0] == b'\n' {
                let _ = uart.writer_mut().flush();
            }
        }
    }
}

/// Default capacity of a [`SerialOutput`] buffer.
pub const OUTPUT_BUFFER_BYTES: usize = 256 << 10;

#[derive(Default)]
struct OutputRing {
    buf: VecDeque<u8>,
    capacity: usize,
    /// Bytes that did not fit (the sink stalled) or that the sink refused.
    dropped: u64,
    /// The writer thread holds a chunk it has not finished writing.
    writing: bool,
}

type OutputShared = Arc<(Mutex<OutputRing>, Condvar)>;

/// Guest serial output on its way to a host sink (stdout or a file) without ever blocking
/// the vCPU: writes go into a bounded buffer that a writer thread drains; when the sink
/// stalls and the buffer is full, further bytes are dropped and counted.
pub struct SerialOutput {
    shared: OutputShared,
}

/// The control side of a [`SerialOutput`]: drop counter and drain at exit.
#[derive(Clone)]
pub struct SerialOutputHandle {
    shared: OutputShared,
}

fn lock_ring(shared: &OutputShared) -> std::sync::MutexGuard<'_, OutputRing> {
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

impl SerialOutput {
    /// Starts the writer thread (`serial-out`) that moves buffered output to `sink`.
    pub fn spawn(
        mut sink: Box<dyn Write + Send>,
        capacity: usize,
    ) -> std::io::Result<(SerialOutput, SerialOutputHandle)> {
        let shared: OutputShared = Arc::new((
            Mutex::new(OutputRing {
                capacity: capacity.max(1),
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let s = shared.clone();
        std::thread::Builder::new()
            .name("serial-out".into())
            .spawn(move || {
                crate::worker::thread_started("serial-out");
                let mut chunk = Vec::with_capacity(4096);
                loop {
                    {
                        let (lock, cv) = &*s;
                        let mut r = lock.lock().unwrap_or_else(|e| e.into_inner());
                        r.writing = false;
                        cv.notify_all();
                        while r.buf.is_empty() {
                            // The last SerialOutput is gone and nothing is left: done.
                            if Arc::strong_count(&s) == 1 {
                                return;
                            }
                            r = cv
                                .wait_timeout(r, Duration::from_millis(200))
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                        let n = r.buf.len().min(4096);
                        chunk.clear();
                        chunk.extend(r.buf.drain(..n));
                        r.writing = true;
                    }
                    if sink.write_all(&chunk).and_then(|_| sink.flush()).is_err() {
                        lock_ring(&s).dropped += chunk.len() as u64;
                    }
                }
            })?;
        Ok((
            SerialOutput {
                shared: shared.clone(),
            },
            SerialOutputHandle { shared },
        ))
    }
}

impl Write for SerialOutput {
    /// Never blocks on the sink and never fails: what does not fit is counted as dropped.
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let (lock, cv) = &*self.shared;
        let mut r = lock.lock().unwrap_or_else(|e| e.into_inner());
        let room = r.capacity.saturating_sub(r.buf.len());
        let take = room.min(data.len());
        r.buf.extend(&data[..take]);
        r.dropped += (data.len() - take) as u64;
        if take > 0 {
            cv.notify_all();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SerialOutputHandle {
    /// Bytes of guest output dropped so far.
    pub fn dropped(&self) -> u64 {
        lock_ring(&self.shared).dropped
    }

    /// Bytes waiting for the sink.
    pub fn buffered(&self) -> usize {
        lock_ring(&self.shared).buf.len()
    }

    /// Waits until everything buffered reached the sink or `timeout` passed (a stalled
    /// sink must not hold up the exit); returns whether all output was written.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut r = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if r.buf.is_empty() && !r.writing {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            r = cv
                .wait_timeout(r, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interrupt::{InterruptHierarchy, KvmVectorLayer, NoRemap, RecordingBackend};
    use vm_device::DeviceMmio;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    pub(super) struct Shared(pub(super) Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn setup() -> (Arc<Ioapic>, SerialPort, Arc<Mutex<Vec<u8>>>, EventFd) {
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(
                Arc::new(RecordingBackend::default()),
                24,
                4096,
            )),
            Arc::new(NoRemap),
        );
        let io = Arc::new(Ioapic::new(0, &h));
        let out = Arc::new(Mutex::new(Vec::new()));
        let ev = EventFd::new(EFD_NONBLOCK).unwrap();
        let port = SerialPort::new(
            IoapicPin::new(io.clone(), COM1_PIN),
            ev.try_clone().unwrap(),
            Box::new(Shared(out.clone())),
        );
        (io, port, out, ev)
    }

    #[test]
    fn output_reaches_writer() {
        let (_, port, out, _) = setup();
        for b in b"hi\n" {
            port.pio_write(PioAddress(COM1_PORT), 0, &[*b]);
        }
        assert_eq!(&*out.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_raises_pin_when_rx_interrupt_enabled() {
        let (io, port, _, ev) = setup();
        // Unmask pin 4, edge, vector 0x24.
        io.mmio_write(vm_device::bus::MmioAddress(0), 0, &0x18u32.to_le_bytes());
        io.mmio_write(vm_device::bus::MmioAddress(0), 0x10, &0x24u32.to_le_bytes());
        port.pio_write(PioAddress(COM1_PORT), 1, &[0x01]); // IER: received data available
        assert_eq!(port.enqueue_input(b"ab"), 2);
        assert_eq!(io.delivered(COM1_PIN), 1);
        let mut b = [0u8];
        port.pio_read(PioAddress(COM1_PORT), 0, &mut b);
        assert_eq!(b[0], b'a');
        port.pio_read(PioAddress(COM1_PORT), 0, &mut b);
        assert_eq!(b[0], b'b');
        assert_eq!(ev.read().unwrap(), 1);
    }

    #[test]
    fn odd_sized_accesses_are_ignored() {
        let (_, port, out, _) = setup();
        port.pio_write(PioAddress(COM1_PORT), 0, b"xy");
        let mut b = [0u8; 2];
        port.pio_read(PioAddress(COM1_PORT), 9, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        assert!(out.lock().unwrap().is_empty());
    }
}

#[cfg(test)]
mod output_tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that blocks every write until opened, like a stalled terminal.
    struct GatedSink {
        entered: mpsc::Sender<()>,
        open: Arc<(Mutex<bool>, Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for GatedSink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn stalled_sink_drops_beyond_capacity_and_counts_them() {
        let (tx, rx) = mpsc::channel();
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = GatedSink {
            entered: tx,
            open: open.clone(),
            out: out.clone(),
        };
        let (mut w, h) = SerialOutput::spawn(Box::new(sink), 16).unwrap();
        // The writer thread takes "a" and blocks in the sink.
        assert_eq!(w.write(b"a").unwrap(), 1);
        rx.recv().unwrap();
        // 16 bytes fit, 4 are dropped; the write itself neither blocks nor fails.
        assert_eq!(w.write(&[b'b'; 20]).unwrap(), 20);
        assert_eq!(h.dropped(), 4);
        assert_eq!(h.buffered(), 16);
        assert!(!h.drain(Duration::from_millis(1)), "sink still stalled");
        // The sink resumes: everything that was kept arrives, in order.
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        assert!(h.drain(Duration::from_secs(60)));
        let mut want = b"a".to_vec();
        want.extend_from_slice(&[b'b'; 16]);
        assert_eq!(*out.lock().unwrap(), want);
        assert_eq!(h.dropped(), 4);
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failing_sink_counts_output_as_dropped() {
        let (mut w, h) = SerialOutput::spawn(Box::new(Broken), 64).unwrap();
        w.write_all(b"hello").unwrap();
        assert!(h.drain(Duration::from_secs(60)));
        assert_eq!(h.dropped(), 5);
    }

    #[test]
    fn serial_port_output_goes_through_the_buffer() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (w, h) =
            SerialOutput::spawn(Box::new(super::tests::Shared(out.clone())), 1024).unwrap();
        let hier = interrupt::InterruptHierarchy::new(
            Arc::new(interrupt::KvmVectorLayer::new(
                Arc::new(interrupt::RecordingBackend::default()),
                24,
                4096,
            )),
            Arc::new(interrupt::NoRemap),
        );
        let io = Arc::new(Ioapic::new(0, &hier));
        let ev = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let port = SerialPort::new(IoapicPin::new(io, COM1_PIN), ev, Box::new(w));
        for b in b"line\n" {
            port.pio_write(PioAddress(COM1_PORT), 0, &[*b]);
        }
        assert!(h.drain(Duration::from_secs(60)));
        assert_eq!(&*out.lock().unwrap(), b"line\n");
    }
}
