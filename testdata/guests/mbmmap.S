/*
 * mbmmap: a Multiboot 1 guest that checks the memory map against the
 * legacy VGA window.
 *
 * The Multiboot header (magic 0x1BADB002, flags 0x3: page-aligned modules
 * and memory information, no address fields) opens the code, so capsule
 * loads the ELF file by its program headers and enters _start in 32-bit
 * protected mode, paging off, with EAX = 0x2BADB002 and EBX = the
 * Multiboot information. hello.ld links it at 1 MiB; the code is 32-bit
 * in an ELF64 file, which capsule's Multiboot loader accepts. It sets its
 * own stack at 0x80000, then
 *   1. checks EAX, else prints "mbmmap: bad magic\n" on COM1 (port
 *      0x3f8) and writes status 3 to port 0xf4 (capsule's exit port),
 *   2. checks that the information has a memory map (flags bit 6,
 *      mmap_length > 0), else prints "mbmmap: no memory map\n", status 4,
 *   3. walks the map (u32 size, u64 base_addr, u64 length, u32 type; the
 *      next entry size+4 bytes on) and for the first entry that overlaps
 *      [0xA0000, 0xC0000) prints "mbmmap: entry overlaps the VGA window:
 *      base 0x<16 hex digits> length 0x<16 hex digits> type 0x<8 hex
 *      digits>\n" and exits with status 1,
 *   4. else prints "mmap ok\n" and exits with status 0,
 * and halts with interrupts off, forever.
 *
 * Build (the pattern rule of the Makefile):
 *   gcc -nostdlib -static -no-pie -Wl,-T,testdata/guests/hello.ld \
 *       -Wl,--build-id=none -o testdata/guests/mbmmap.elf testdata/guests/mbmmap.S
 *
 * Only block comments here: gcc puts the file through cpp (as it does
 * every .S file), which also brings in #include "lib64.inc".
 */
	.intel_syntax noprefix

	.set	MB_MAGIC, 0x1badb002
	.set	MB_FLAGS, 0x3
	.set	MB_BOOTLOADER_MAGIC, 0x2badb002
	.set	MBI_FLAGS, 0
	.set	MBI_MMAP_LENGTH, 44
	.set	MBI_MMAP_ADDR, 48
	.set	MBI_FLAG_MMAP, 1 << 6
	.set	VGA_START, 0xa0000
	.set	VGA_END, 0xc0000
	.set	STACK_TOP, 0x80000

	.section .rodata, "a"
msg_ok:
	.ascii	"mmap ok\n"
	.set	msg_ok_len, . - msg_ok
msg_magic:
	.ascii	"mbmmap: bad magic\n"
	.set	msg_magic_len, . - msg_magic
msg_nommap:
	.ascii	"mbmmap: no memory map\n"
	.set	msg_nommap_len, . - msg_nommap
msg_overlap:
	.ascii	"mbmmap: entry overlaps the VGA window: base 0x"
	.set	msg_overlap_len, . - msg_overlap
msg_length:
	.ascii	" length 0x"
	.set	msg_length_len, . - msg_length
msg_type:
	.ascii	" type 0x"
	.set	msg_type_len, . - msg_type
msg_newline:
	.ascii	"\n"

	.section .text.start, "ax", @progbits
	.code32
	.align	4
mb_header:
	.long	MB_MAGIC
	.long	MB_FLAGS
	.long	-(MB_MAGIC + MB_FLAGS)

	.globl	_start
	.type	_start, @function
_start:
	mov	esp, STACK_TOP
	cld
	cmp	eax, MB_BOOTLOADER_MAGIC
	jne	.Lbad_magic
	test	dword ptr [ebx + MBI_FLAGS], MBI_FLAG_MMAP
	jz	.Lno_mmap
	mov	edi, dword ptr [ebx + MBI_MMAP_LENGTH]
	test	edi, edi
	jz	.Lno_mmap
	mov	esi, dword ptr [ebx + MBI_MMAP_ADDR]	/* esi: the entry */
	add	edi, esi				/* edi: end of the map */
	jc	.Lno_mmap

.Lentry:
	cmp	esi, edi
	jae	.Lok
	mov	eax, dword ptr [esi + 4]	/* base_addr, low half */
	mov	edx, dword ptr [esi + 8]	/* base_addr, high half */
	test	edx, edx
	jnz	.Lnext				/* starts at or above 4 GiB */
	cmp	eax, VGA_END
	jae	.Lnext				/* starts past the window */
	mov	ecx, dword ptr [esi + 12]	/* length, low half */
	mov	ebp, dword ptr [esi + 16]	/* length, high half */
	add	ecx, eax
	adc	ebp, edx			/* ebp:ecx: end of the entry */
	test	ebp, ebp
	jnz	.Loverlap
	cmp	ecx, VGA_START
	ja	.Loverlap
.Lnext:
	mov	eax, dword ptr [esi]		/* size of the rest of the entry */
	add	eax, 4
	add	esi, eax
	jnc	.Lentry
	jmp	.Lok				/* wrapped: past any map */

.Lok:
	mov	esi, offset msg_ok
	mov	ecx, msg_ok_len
	call	puts
	xor	eax, eax
	jmp	.Lexit

.Loverlap:
	mov	ebx, esi			/* ebx: the entry */
	mov	esi, offset msg_overlap
	mov	ecx, msg_overlap_len
	call	puts
	mov	eax, dword ptr [ebx + 8]
	call	puthex
	mov	eax, dword ptr [ebx + 4]
	call	puthex
	mov	esi, offset msg_length
	mov	ecx, msg_length_len
	call	puts
	mov	eax, dword ptr [ebx + 16]
	call	puthex
	mov	eax, dword ptr [ebx + 12]
	call	puthex
	mov	esi, offset msg_type
	mov	ecx, msg_type_len
	call	puts
	mov	eax, dword ptr [ebx + 20]
	call	puthex
	mov	esi, offset msg_newline
	mov	ecx, 1
	call	puts
	mov	eax, 1
	jmp	.Lexit

.Lbad_magic:
	mov	esi, offset msg_magic
	mov	ecx, msg_magic_len
	call	puts
	mov	eax, 3
	jmp	.Lexit

.Lno_mmap:
	mov	esi, offset msg_nommap
	mov	ecx, msg_nommap_len
	call	puts
	mov	eax, 4

.Lexit:					/* al: exit status */
	out	0xf4, al		/* capsule stops the VM here */
.Lhalt:
	cli
	hlt
	jmp	.Lhalt
	.size	_start, . - _start

/*
 * puts writes ecx bytes from [esi] to COM1, one OUT per byte.
 * Clobbers eax, ecx, edx, esi.
 */
	.text
	.code32
	.type	puts, @function
puts:
	mov	edx, 0x3f8
	jecxz	.Lputs_done
.Lputs_loop:
	lodsb
	out	dx, al
	loop	.Lputs_loop
.Lputs_done:
	ret
	.size	puts, . - puts

/*
 * puthex writes eax to COM1 as 8 lower-case hex digits.
 * Clobbers eax, ecx, edx.
 */
	.type	puthex, @function
puthex:
	mov	edx, 0x3f8
	mov	ecx, 8
.Lputhex_loop:
	rol	eax, 4
	push	eax
	and	al, 0xf
	add	al, 0x30		/* '0' */
	cmp	al, 0x39		/* '9' */
	jbe	.Lputhex_digit
	add	al, 0x27		/* 'a' - '0' - 10 */
.Lputhex_digit:
	out	dx, al
	pop	eax
	loop	.Lputhex_loop
	ret
	.size	puthex, . - puthex

	.section .note.GNU-stack, "", @progbits
